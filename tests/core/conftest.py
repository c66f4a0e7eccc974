"""The core tier: use cases driven through ``memslotd.core``'s public face, without HTTP.

Every test runs twice: on ``InMemoryKernelDouble`` (no /dev/kvm needed) and on the real kernel
adapter (``build_core``; skipped with the reason where /dev/kvm is missing). Tests that only
the real kernel can answer (the probe) take ``kvm_core``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from memslotd.core import Limits, MemoryCore
from tests.conftest import KVM_SKIP_REASON
from tests.core.kernel_double import InMemoryKernelDouble


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _real_core() -> MemoryCore:
    if KVM_SKIP_REASON:
        pytest.skip(f"needs KVM: {KVM_SKIP_REASON}")
    from memslotd.kernel_adapter import build_core
    from memslotd.settings import Settings

    return build_core(Settings(socket=Path("/nonexistent/memslotd.sock")))  # type: ignore[call-arg]


@pytest.fixture(params=["double", pytest.param("kvm", marks=pytest.mark.kvm)])
async def core(request: pytest.FixtureRequest) -> AsyncIterator[MemoryCore]:
    made = MemoryCore(InMemoryKernelDouble(), limits=Limits()) if request.param == "double" else _real_core()
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def kvm_core() -> AsyncIterator[MemoryCore]:
    made = _real_core()
    try:
        yield made
    finally:
        await made.close()
