"""The lab's test plumbing: a missing feature skips on a host and fails inside the lab."""

from __future__ import annotations

import pytest

from tests.conftest import IN_LAB_TEST_TIMEOUT, in_lab, require_feature


def test_a_missing_feature_skips_on_a_host_with_the_reason(monkeypatch):
    monkeypatch.delenv("MEMSLOTD_LAB", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no such feature"):
        require_feature(False, "no such feature")


def test_a_missing_feature_fails_inside_the_lab(monkeypatch):
    monkeypatch.setenv("MEMSLOTD_LAB", "1")
    with pytest.raises(pytest.fail.Exception, match="the lab must offer this, but: no such feature"):
        require_feature(False, "no such feature")


def test_a_present_feature_goes_on_everywhere(monkeypatch):
    for lab in ("1", "0"):
        monkeypatch.setenv("MEMSLOTD_LAB", lab)
        require_feature(True, "unused")


def test_other_tests_get_a_default_timeout_only_inside_the_lab(request):
    marker = request.node.get_closest_marker("timeout")
    if in_lab():
        assert marker is not None and marker.args[0] == IN_LAB_TEST_TIMEOUT
    else:
        assert marker is None


@pytest.mark.lab
def test_a_lab_test_has_a_timeout_by_default(request):
    marker = request.node.get_closest_marker("timeout")
    assert marker is not None and marker.args[0] > 0
