"""In-process API tests: the real app and the real /dev/kvm, driven by Starlette's TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from memslotd.api.app import create_app
from memslotd.kernel_adapter import build_core
from memslotd.settings import Settings

MiB = 1 << 20
GiB = 1 << 30


def make_client(**overrides: object) -> TestClient:
    settings = Settings(socket=Path("/nonexistent/memslotd.sock"), **overrides)  # type: ignore[arg-type]
    return TestClient(create_app(settings, lambda: build_core(settings)), base_url="http://memslotd")


@pytest.fixture
def client() -> Iterator[TestClient]:
    with make_client() as c:
        yield c


class VMHelper:
    """Small helpers that keep the tests about behaviour, not plumbing."""

    def __init__(self, client: TestClient, vm_id: str):
        self.c = client
        self.id = vm_id
        self.base = f"/v1/vms/{vm_id}"

    def gmem(self, size: int = 4 * MiB, flags: list[str] | None = None) -> str:
        r = self.c.post(
            f"{self.base}/guest-memfds",
            json={"size": size, "flags": flags if flags is not None else ["mmap", "init_shared"]},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def shm(self, size: int = 4 * MiB) -> str:
        r = self.c.post(f"{self.base}/shared-memory", json={"size": size})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def put_slot(
        self,
        slot: int,
        gpa: int,
        size: int,
        *,
        shm: str | None = None,
        gmem: str | None = None,
        shm_offset: int = 0,
        gmem_offset: int = 0,
        **extra: object,
    ):
        body: dict[str, object] = {"guest_phys_addr": gpa, "memory_size": size, **extra}
        if shm:
            body["shared"] = {"shared_memory_id": shm, "offset": shm_offset}
        if gmem:
            body["private"] = {"guest_memfd_id": gmem, "offset": gmem_offset}
        return self.c.put(f"{self.base}/memslots/{slot}", json=body)


@pytest.fixture
def vm(client: TestClient) -> VMHelper:
    r = client.post("/v1/vms", json={})
    assert r.status_code == 201, r.text
    return VMHelper(client, r.json()["id"])
