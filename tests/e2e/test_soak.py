"""The soak script, shortened: 4 clients for 15 s must reconcile, probes included (``make soak`` runs the long one)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import patience

SOAK = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"


def test_a_short_soak_reconciles():
    proc = subprocess.run(
        [sys.executable, str(SOAK), "--clients", "4", "--seconds", "15"],
        capture_output=True,
        text=True,
        timeout=patience(300),
    )
    report = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert proc.returncode == 0 and report["failures"] == [], proc.stdout + proc.stderr[-2000:]
    assert report["ops"] > 50 and not any(int(s) >= 500 for s in report["statuses"])
    probes = report["probes"]
    assert probes["slots"] > 0 and probes["holes"] > 0 and probes["disagreements"] == 0, probes
