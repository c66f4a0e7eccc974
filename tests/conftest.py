"""Shared fixtures. Kernel tests need a working /dev/kvm; without it they skip and say why.

Lab tests (marker ``lab``) prove what only a kernel with memory attributes can show. They run
wherever the feature exists: inside the KVM lab (``make lab-test``; lab/run sets
``MEMSLOTD_LAB=1``) a missing feature FAILS, on any other host it skips with the reason
(``require_feature``). Lab tests, and every test inside the lab, have a timeout: TCG turns a
hang into an hour.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.helpers import Daemon, start_daemon
from tests.kernel_facts import in_lab, require_feature


def _kvm_unavailable_reason() -> str | None:
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm is missing on this machine"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable by this user"
    return None


# Hypothesis' per-example deadline (200 ms) is a timing assertion: it failed on a loaded CI
# machine and fails under TCG. Performance lives in benchmarks; the properties stay properties.
settings.register_profile("memslotd", deadline=None)
settings.load_profile("memslotd")

KVM_SKIP_REASON = _kvm_unavailable_reason()
#: every test below these runs the real daemon or core on /dev/kvm
KVM_TEST_DIRS = ("kvm", "api", "e2e", "client", "ui", "contract", "lab")
#: default per-test timeouts (seconds; a test's own ``pytest.mark.timeout`` wins)
LAB_TEST_TIMEOUT = int(os.environ.get("MEMSLOTD_LAB_TEST_TIMEOUT", "300"))
IN_LAB_TEST_TIMEOUT = int(os.environ.get("MEMSLOTD_IN_LAB_TEST_TIMEOUT", "600"))


@pytest.fixture(name="require_feature")
def require_feature_fixture() -> Callable[[object, str], None]:
    """``require_feature(cond, reason)``: skip on this host, fail in the lab, when ``cond`` is false."""
    return require_feature


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    lab = in_lab()
    for item in items:
        if any(part in KVM_TEST_DIRS for part in Path(str(item.fspath)).parts[-3:-1]):
            item.add_marker(pytest.mark.kvm)
        is_lab_test = item.get_closest_marker("lab") is not None
        if not item.get_closest_marker("timeout") and (lab or is_lab_test):
            item.add_marker(pytest.mark.timeout(IN_LAB_TEST_TIMEOUT if lab and not is_lab_test else LAB_TEST_TIMEOUT))
        if KVM_SKIP_REASON and item.get_closest_marker("kvm"):
            if lab and is_lab_test:
                continue  # the lab has /dev/kvm or it is broken: let the test fail on it
            item.add_marker(pytest.mark.skip(reason=f"needs KVM: {KVM_SKIP_REASON}"))


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Fails the test if it leaves this process with more fds than it started with."""
    before = set(os.listdir("/proc/self/fd"))
    yield
    after = set(os.listdir("/proc/self/fd"))
    leaked = {fd: _fd_target(fd) for fd in after - before}
    leaked = {fd: t for fd, t in leaked.items() if t is not None}
    assert not leaked, f"leaked fds: {leaked}"


def _fd_target(fd: str) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        return None


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory (Unix socket paths are limited to 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="msd-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon(short_tmp: Path) -> Iterator[Daemon]:
    d = start_daemon(short_tmp)
    yield d
    d.stop()
