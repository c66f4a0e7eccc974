"""``guest_backing`` names the backing the guest really reads, for every kind of slot: the host
writes one pattern into each backing, the guest (probe) reads, and the field must name the
backing whose pattern it saw. Host-honest: the expected answer is never pinned, the guest's
read is the oracle (PVM's shadow paging and TDP answer differently for mmap guest_memfds)."""

from __future__ import annotations

import pytest

from tests.kernel_facts import kernel_facts, require_feature

from .conftest import GiB, MiB

GPA = 4 * GiB
SHARED_PATTERN, GMEM_PATTERN = "5a" * 8, "c3" * 8

#: (guest_memfd flags or None for no private part, with a shared part)
KINDS = {
    "shared_only": (None, True),
    "guest_memfd_only": (["mmap", "init_shared"], False),
    "mmap_without_init_shared": (["mmap"], False),
    "plain_guest_memfd_and_shared": ([], True),
    "plain_guest_memfd_only": ([], False),
    "mmap_guest_memfd_and_shared": (["mmap", "init_shared"], True),
    "mmap_without_init_shared_and_shared": (["mmap"], True),
}


def observed_backing(c, base: str, gmem: str | None, gmem_written: bool, shm: str | None) -> str:
    result = c.post(f"{base}/probe", json={"ops": [{"op": "read", "guest_phys_addr": GPA, "length": 8}]}).json()
    (seen,) = result["results"]
    if not seen["ok"]:
        return "none"  # mmio / fault: nothing backs the access
    if shm is not None and seen["data_hex"] == SHARED_PATTERN:
        return "shared_memory"
    if gmem is not None and seen["data_hex"] == (GMEM_PATTERN if gmem_written else "00" * 8):
        return "guest_memfd"
    raise AssertionError(f"the guest read {seen['data_hex']}, no backing holds that")


def check_kind(c, vm_type: str, kind: str) -> None:
    flags, with_shared = KINDS[kind]
    supported = kernel_facts().per_vm_type[vm_type].gmem_flag_names
    if flags is not None and not set(flags) <= set(supported):
        pytest.skip(f"{vm_type} VMs here accept guest_memfd flags {supported}, not {flags}")
    base = f"/v1/vms/{c.post('/v1/vms', json={'type': vm_type}).json()['id']}"
    body: dict = {"guest_phys_addr": GPA, "memory_size": 2 * MiB}
    shm = gmem = None
    if with_shared:
        shm = c.post(f"{base}/shared-memory", json={"size": 2 * MiB}).json()["id"]
        c.post(f"{base}/shared-memory/{shm}/bytes", json={"offset": 0, "data_hex": SHARED_PATTERN})
        body["shared"] = {"shared_memory_id": shm}
    gmem_written = False
    if flags is not None:
        gmem = c.post(f"{base}/guest-memfds", json={"size": 2 * MiB, "flags": flags}).json()["id"]
        gmem_written = (
            c.post(f"{base}/guest-memfds/{gmem}/bytes", json={"offset": 0, "data_hex": GMEM_PATTERN}).status_code == 200
        )
        body["private"] = {"guest_memfd_id": gmem}
    slot = c.put(f"{base}/memslots/0", json=body)
    assert slot.status_code == 201, slot.text
    reported = slot.json()["guest_backing"]
    seen = observed_backing(c, base, gmem, gmem_written, shm)
    if reported == "per_attribute":  # the kernel routes by attribute: check both states
        state = c.get(f"{base}/memory/attributes").json()["ranges"][0]["state"]
        assert (state, seen) == ("private", "guest_memfd")
        c.post(f"{base}/memory/convert", json={"guest_phys_addr": GPA, "size": 4096, "to": "shared", "discard": False})
        assert observed_backing(c, base, gmem, gmem_written, shm) == ("shared_memory" if shm else "none")
        return
    assert reported == seen, f"{kind}: reported {reported!r}, the guest read {seen!r}"


@pytest.mark.parametrize("kind", KINDS)
def test_guest_backing_names_what_the_guest_reads_on_a_default_vm(client, kind):
    check_kind(client, "default", kind)


@pytest.mark.lab
@pytest.mark.parametrize("kind", KINDS)
def test_guest_backing_names_what_the_guest_reads_on_a_private_memory_vm(client, kind):
    vm_type = kernel_facts().private_vm_type()
    require_feature(vm_type is not None, "no VM type with kernel-enforced private memory on this host")
    assert vm_type is not None
    check_kind(client, vm_type, kind)
