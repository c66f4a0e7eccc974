"""deploy/ parses and validates with the real tools: systemd-analyze, kubernetes-validate, hadolint."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.helpers import patience

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_the_systemd_units_pass_systemd_analyze_verify(tmp_path):
    for unit in ("memslotd.service", "memslotd.socket", "memslotd-ro.socket"):
        text = (DEPLOY / "systemd" / unit).read_text()
        # verify checks that ExecStart exists: point it at this checkout's entry point
        (tmp_path / unit).write_text(text.replace("/usr/bin/memslotd", str(BIN / "memslotd")))
    r = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            *(str(tmp_path / u) for u in ("memslotd.service", "memslotd.socket", "memslotd-ro.socket")),
        ],
        capture_output=True,
        text=True,
        timeout=patience(60),
    )
    assert r.returncode == 0, r.stderr


def test_systemd_unit_is_notify_hardened_and_allows_kvm():
    unit = (DEPLOY / "systemd" / "memslotd.service").read_text()
    for line in (
        "Type=notify",
        "DeviceAllow=/dev/kvm rw",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=",
    ):
        assert line in unit.splitlines(), line
    assert "FileDescriptorName=api" in (DEPLOY / "systemd" / "memslotd.socket").read_text()
    assert "FileDescriptorName=api-ro" in (DEPLOY / "systemd" / "memslotd-ro.socket").read_text()


def test_the_example_configurations_are_valid_settings():
    from memslotd.settings import Settings

    data = tomllib.loads((DEPLOY / "systemd" / "memslotd.toml").read_text())
    Settings(**data)
    cm = yaml.safe_load((DEPLOY / "kubernetes" / "configmap.yaml").read_text())
    Settings(**tomllib.loads(cm["data"]["memslotd.toml"]))


def test_kubernetes_manifests_validate_against_the_schemas():
    manifests = sorted(str(p) for p in (DEPLOY / "kubernetes").glob("*.yaml"))
    r = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", *manifests],
        capture_output=True,
        text=True,
        timeout=patience(120),
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_containerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed")
    r = subprocess.run(
        [hadolint, str(DEPLOY / "container" / "Containerfile")], capture_output=True, text=True, timeout=patience(60)
    )
    assert r.returncode == 0, r.stdout + r.stderr
