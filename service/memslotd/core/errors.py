"""Domain errors: one class per kind of failure (it decides the HTTP status), and a stable
``code`` per condition (it names the rule), e.g. ``InvalidRequest(code="RANGE_NOT_ALIGNED")``.

::

    DomainError (code, detail, extra)
     ├── InvalidRequest        the request breaks a rule (422): RANGE_NOT_ALIGNED, RANGE_EMPTY,
     │                         RANGE_OVERFLOW, RANGE_OUTSIDE_BACKING, SLOT_ID_OUT_OF_RANGE, …
     ├── NotFound              unknown VM, guest_memfd, shared memory, slot (404)
     ├── Conflict              clashes with existing state (409): SLOT_OVERLAP, SLOT_EXISTS,
     │                         SLOT_IMMUTABLE, GMEM_RANGE_BOUND, GPA_RESERVED, RANGE_NOT_COVERED, …
     ├── PreconditionFailed    If-Match / If-None-Match did not hold (412)
     ├── CapabilityMissing     this host cannot do it (501)
     ├── QuotaExceeded         a configured limit (429 for counts/rates, 507 for bytes)
     ├── VMBusy                the VM's mutation queue is full (429)
     ├── HostResourcesExhausted ENOMEM/EMFILE/ENOSPC from the kernel, HOST_MEMORY_LOW (503)
     ├── ShuttingDown          a mutation after SIGTERM (503, Retry-After)
     └── KernelError           any other errno the kernel returned (500 unless mapped)
"""

from __future__ import annotations

import errno as _errno
from typing import Any

__all__ = [
    "DomainError",
    "InvalidRequest",
    "NotFound",
    "Conflict",
    "PreconditionFailed",
    "CapabilityMissing",
    "QuotaExceeded",
    "VMBusy",
    "HostResourcesExhausted",
    "ShuttingDown",
    "KernelError",
    "kernel_error",
]


class DomainError(Exception):
    code = "DOMAIN_ERROR"
    title = "Request failed"
    status: int | None = None  # set where the condition alone does not decide it (e.g. a partial failure)

    def __init__(self, detail: str, *, code: str | None = None, **extra: Any):
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.extra = extra


class InvalidRequest(DomainError):
    code = "INVALID_REQUEST"
    title = "Invalid request"


class NotFound(DomainError):
    code = "NOT_FOUND"
    title = "Not found"


class Conflict(DomainError):
    code = "CONFLICT"
    title = "Conflict with existing state"


class PreconditionFailed(DomainError):
    code = "PRECONDITION_FAILED"
    title = "Precondition failed"


class CapabilityMissing(DomainError):
    code = "CAPABILITY_MISSING"
    title = "Capability missing on this host"


class QuotaExceeded(DomainError):
    code = "QUOTA_EXCEEDED"
    title = "Quota exceeded"

    def __init__(self, detail: str, *, bytes_quota: bool = False, **extra: Any):
        super().__init__(detail, **extra)
        self.bytes_quota = bytes_quota


class VMBusy(DomainError):
    code = "VM_BUSY"
    title = "Too many pending operations on this VM"


class HostResourcesExhausted(DomainError):
    code = "HOST_RESOURCES_EXHAUSTED"
    title = "Host resources exhausted"


class ShuttingDown(DomainError):
    code = "SHUTTING_DOWN"
    title = "The daemon is shutting down"
    status = 503


class KernelError(DomainError):
    code = "KERNEL_ERROR"
    title = "The kernel refused the operation"


_EXHAUSTION = {_errno.ENOMEM, _errno.EMFILE, _errno.ENFILE, _errno.ENOSPC}


def kernel_error(exc: OSError, what: str, *, ioctl: str | None = None) -> DomainError:
    """Translate a kernel failure (``OSError`` with errno, maybe ``ioctl``) once, here.

    The daemon validates first, so reaching here with EINVAL/EEXIST means the
    kernel knows a rule we do not mirror; the errno still travels exactly.
    """
    code = exc.errno or 0
    ioctl = ioctl or getattr(exc, "ioctl", None)
    name = _errno.errorcode.get(code, str(code))
    detail = f"{what}: {ioctl or 'syscall'} failed with {name}" + (f" ({exc.strerror})" if exc.strerror else "")
    extra: dict[str, Any] = {"errno": code, "errno_name": name, "ioctl": ioctl}
    if code in _EXHAUSTION:
        return HostResourcesExhausted(detail, **extra)
    if code == _errno.EEXIST:
        return Conflict(detail, code="SLOT_OVERLAP", **extra)
    if code in (_errno.ENOTTY, _errno.EOPNOTSUPP, _errno.ENODEV):
        return CapabilityMissing(detail, **extra)
    if code == _errno.EINVAL:
        return InvalidRequest(detail, code="KERNEL_REJECTED", **extra)
    return KernelError(detail, **extra)
