"""``make bench``: run every case once, print a table, write JSON to benchmarks/results/.

Options: ``--only NAME[,NAME]`` to run some cases; ``--convert-gib N`` (default 8: a 64 GiB
populated range does not fit in this machine's 24 GiB).
"""

from __future__ import annotations

import argparse

from . import conversion, events
from ._harness import report


def main() -> None:
    p = argparse.ArgumentParser(prog="make bench")
    p.add_argument("--only", default="")
    p.add_argument("--convert-gib", type=int, default=8)
    args = p.parse_args()
    cases = {
        "conversion.populated_vs_raw_punch": lambda: conversion.populated_convert_vs_raw_punch(args.convert_gib),
        "conversion.million_fragments": conversion.million_fragments,
        "events.latency_1_subscriber": lambda: events.latency(1),
        "events.latency_10_subscribers": lambda: events.latency(10),
        "events.latency_50_subscribers": lambda: events.latency(50),
        "events.stalled_subscriber_memory": events.stalled_subscriber_memory,
    }
    chosen = [c for c in cases if not args.only or any(o in c for o in args.only.split(","))]
    results = {}
    for name in chosen:
        print(f"running {name} ...", flush=True)
        results[name] = cases[name]()
    report(results)


if __name__ == "__main__":
    main()
