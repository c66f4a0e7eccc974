"""A closed kernel object refuses every use with EBADF, found by introspection.

Every public method and property of every closable class of ``memslotd.kvm`` is called on a
closed instance and must raise :class:`FdClosedError` (errno EBADF) before it reaches the
kernel, where a closed fd number may already name another file. A new method without the
closed-fd guard, or a new closable class without a maker here, fails these tests.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator

import pytest

import memslotd.kvm
from memslotd.kvm import FdClosedError, KVMSystem, Mapping, SharedMemory, VMFd

pytestmark = pytest.mark.usefixtures("no_fd_leak")
MiB = 1 << 20


def _closable_classes() -> dict[str, type]:
    """Every public class of a public memslotd.kvm module that can be closed, by name. A base
    class (OwnedFd, the file-backed base) is covered through each of its subclasses."""
    found = set()
    for info in pkgutil.iter_modules(memslotd.kvm.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"memslotd.kvm.{info.name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and not name.startswith("_") and hasattr(cls, "close"):
                found.add(cls)
    return {
        cls.__name__: cls for cls in found if not any(other is not cls and issubclass(other, cls) for other in found)
    }


CLASSES = _closable_classes()


def _a_mapping(system: KVMSystem, vm: VMFd) -> Mapping:
    with SharedMemory.create("t", MiB) as shm:
        return Mapping(shm.fd, MiB)  # a mapping outlives the fd it was made from


#: how to make one instance of each closable class (closed by the test)
MAKERS: dict[str, Callable[[KVMSystem, VMFd], object]] = {
    "KVMSystem": lambda system, vm: KVMSystem.open(),
    "VMFd": lambda system, vm: system.create_vm(0),
    "VCPUFd": lambda system, vm: vm.create_vcpu(0),
    "GuestMemfd": lambda system, vm: vm.create_guest_memfd(MiB, 0),
    "SharedMemory": lambda system, vm: SharedMemory.create("t", MiB),
    "Mapping": _a_mapping,
    "GuestRunner": lambda system, vm: CLASSES["GuestRunner"](vm),
}

#: public members that are legitimately usable after close, each with the reason
CALLABLE_AFTER_CLOSE: dict[str, dict[str, str]] = {
    name: {
        "close": "idempotent: closing twice is a no-op (test_close_is_idempotent_on_every_kernel_object)",
        "closed": "the state itself: it answers True",
    }
    for name in MAKERS
}
del CALLABLE_AFTER_CLOSE["GuestRunner"]["closed"]  # it has none
CALLABLE_AFTER_CLOSE["KVMSystem"]["open"] = "a constructor: opens a new /dev/kvm fd, does not use this one"
CALLABLE_AFTER_CLOSE["SharedMemory"]["create"] = "a constructor: makes a new memfd, does not use this one"
CALLABLE_AFTER_CLOSE["GuestMemfd"]["mappable"] = "a value of the creation flags, kept in Python: no fd involved"

#: an argument for each parameter annotation (the guard comes first, so any well-typed value does;
#: 4096 keeps the probe's own bounds check, which runs before the guard, satisfied)
SAMPLE_BY_ANNOTATION: dict[str, object] = {
    "int": 4096,
    "bool": False,
    "bytes": b"x",
    "Sequence[RegionArgs]": [(0, 0, 0, 0, 0, 0, 0)],
    "SupportedCPUID": None,  # replaced by the host's real answer in the test
}


def _public_members(cls: type) -> dict[str, object]:
    """Public methods, properties, class- and static methods, as the class defines them
    (dunders like ``__repr__`` and ``__enter__`` are not uses of the fd)."""
    members = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        member = inspect.getattr_static(cls, name)
        if isinstance(member, (property, classmethod, staticmethod)) or inspect.isfunction(member):
            members[name] = member
    return members


def _sample_arguments(cls: str, name: str, method: object, samples: dict[str, object]) -> list[object]:
    """A sample for each parameter without a default (after ``self``), by its annotation."""
    required = [p for p in list(inspect.signature(method).parameters.values())[1:] if p.default is p.empty]
    missing = [p.annotation for p in required if p.annotation not in samples]
    assert not missing, f"{cls}.{name}: add a sample for the annotation(s) {missing}"
    return [samples[p.annotation] for p in required]


@pytest.fixture
def parents() -> Iterator[tuple[KVMSystem, VMFd]]:
    with KVMSystem.open() as system, system.create_vm(0) as vm:
        yield system, vm


def test_every_closable_kernel_class_is_checked_after_close():
    assert set(CLASSES) == set(MAKERS)


def test_every_allowed_member_exists_so_the_allowlist_cannot_go_stale():
    stale = [
        f"{cls}.{name}"
        for cls, allowed in CALLABLE_AFTER_CLOSE.items()
        for name in allowed
        if name not in _public_members(CLASSES[cls])
    ]
    assert not stale


@pytest.mark.parametrize("cls", list(MAKERS))
def test_every_public_method_and_property_of_a_closed_object_raises_ebadf(cls, parents):
    system, vm = parents
    samples = dict(SAMPLE_BY_ANNOTATION, SupportedCPUID=system.get_supported_cpuid())
    obj = MAKERS[cls](system, vm)
    obj.close()
    allowed = CALLABLE_AFTER_CLOSE[cls]
    unguarded = []
    for name, member in _public_members(CLASSES[cls]).items():
        if name in allowed:
            continue
        if isinstance(member, (classmethod, staticmethod)):
            unguarded.append(f"{name}: a class/static method; allow it with its reason if it needs no instance")
            continue
        args = None if isinstance(member, property) else _sample_arguments(cls, name, member, samples)
        try:
            used = getattr(obj, name)  # a property is used here
            if args is not None:
                used(*args)
        except FdClosedError as exc:
            if exc.errno != errno.EBADF:
                unguarded.append(f"{name}: FdClosedError with errno {exc.errno}")
        except Exception as exc:  # noqa: BLE001 - anything but the guard's error is the finding
            unguarded.append(f"{name}: {type(exc).__name__}: {exc}")
        else:
            unguarded.append(f"{name}: answered after close")
    assert not unguarded, f"{cls} used after close:\n" + "\n".join(unguarded)


@pytest.mark.parametrize("cls", list(MAKERS))
def test_close_is_idempotent_on_every_kernel_object(cls, parents):
    obj = MAKERS[cls](*parents)
    obj.close()
    obj.close()
    if "closed" in CALLABLE_AFTER_CLOSE[cls]:
        assert obj.closed is True
