"""A real memory error (CONFIG_MEMORY_FAILURE): the test-rig endpoint poisons a guest_memfd
page from a sacrificial child, the guest's next access is a real KVM_EXIT_MEMORY_FAULT with
EHWPOISON, and punching the page recovers it."""

from __future__ import annotations

import errno

import pytest

from tests.api.conftest import GiB, MiB, make_client
from tests.kernel_facts import EHWPOISON, kernel_facts, require_feature

pytestmark = [pytest.mark.lab, pytest.mark.kvm]

GPA, PAGE = 4 * GiB, 4096


def test_poisoned_guest_memfd_page_is_announced_faulted_by_the_guest_and_recovered_by_punch():
    require_feature(
        kernel_facts().memory_failure, "this kernel has no CONFIG_MEMORY_FAILURE (/proc/sys/vm/memory_failure_recovery)"
    )
    require_feature(
        "init_shared" in kernel_facts().default.gmem_flag_names, "default VMs here cannot host-map a guest_memfd"
    )
    with make_client(enable_memory_error_injection=True) as c:
        base = f"/v1/vms/{c.post('/v1/vms', json={}).json()['id']}"
        g = c.post(f"{base}/guest-memfds", json={"size": 2 * MiB, "flags": ["mmap", "init_shared"]}).json()["id"]
        assert (
            c.put(
                f"{base}/memslots/0",
                json={"guest_phys_addr": GPA, "memory_size": 2 * MiB, "private": {"guest_memfd_id": g}},
            ).status_code
            == 201
        )
        seq = c.app.state.core.events.seq
        r = c.post(f"{base}/guest-memfds/{g}/inject-error", json={"offset": PAGE})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["offset"], body["length"]) == (PAGE, PAGE)
        assert body["gpa_ranges"] == [{"slot": 0, "guest_phys_addr": GPA + PAGE, "size": PAGE}]
        # memory_failure() reports MF_DELAYED from guest_memfd as a failure on these kernels: the
        # injector sees EBUSY or is killed by SIGBUS; the daemon says which, never pretends 0
        assert body["kernel_errno"] in (None, errno.EBUSY), body
        errors = [e.data for e in c.app.state.core.events.since(seq) if e.type == "memory.error"]
        assert [(e["guest_memfd_id"], e["offset"], e["gpa_ranges"]) for e in errors] == [(g, PAGE, body["gpa_ranges"])]

        seq = c.app.state.core.events.seq
        seen = c.post(
            f"{base}/probe",
            json={
                "ops": [
                    {"op": "read", "guest_phys_addr": GPA + PAGE, "length": 8},
                    {"op": "read", "guest_phys_addr": GPA, "length": 8},
                ]
            },
        ).json()
        poisoned, healthy = seen["results"]
        assert poisoned["ok"] is False
        assert poisoned["exit"] == {
            "reason": "memory_fault",
            "gpa": GPA + PAGE,
            "size": PAGE,
            "flags": 0,
            "is_write": None,
            "errno": EHWPOISON,
            "errno_name": "EHWPOISON",
        }
        assert healthy["ok"] is True  # only the poisoned page is lost
        faults = [e.data for e in c.app.state.core.events.since(seq) if e.type == "memory.fault"]
        assert [(f["gpa"], f["errno_name"], f["exit_reason"]) for f in faults] == [
            (GPA + PAGE, "EHWPOISON", "memory_fault")
        ]

        host = c.get(f"{base}/guest-memfds/{g}/bytes", params={"offset": PAGE, "length": 8})
        assert host.status_code == 409 and host.json()["code"] == "HOST_ACCESS_REFUSED"  # SIGBUS became EFAULT
        assert host.json()["errno_name"] == "EFAULT"

        assert c.post(f"{base}/guest-memfds/{g}/punch-hole", json={"offset": PAGE, "length": PAGE}).status_code == 200
        recovered = c.post(
            f"{base}/probe", json={"ops": [{"op": "read", "guest_phys_addr": GPA + PAGE, "length": 8}]}
        ).json()["results"][0]
        assert (recovered["ok"], recovered["data_hex"]) == (True, "00" * 8)  # a fresh zeroed page
