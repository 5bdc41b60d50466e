"""What the timeline costs: the bench's quick preset with ``trace`` off and on, alternating, in one run.

    python benchmarks/trace_overhead.py [--rounds 3] [--json benchmarks/results/trace_overhead.json]

Per scenario: the median samples/s (epochs after the first) of each round with and without a
trace; reported: each scenario's on/off ratio (median over rounds) and the median over scenarios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

from gpups.bench import machine, presets, run_scenario


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "trace_overhead.json"))
    args = ap.parse_args()
    scenarios = presets("quick", gpu=False)
    rates: dict[str, dict[str, list[float]]] = {sc.id: {"off": [], "on": []} for sc in scenarios}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, sc in enumerate(scenarios):
                order = ("off", "on") if (r + i) % 2 == 0 else ("on", "off")  # (neither always first)
                for mode in order:
                    path = os.path.join(tmp, f"{i}.trace.json") if mode == "on" else None
                    rates[sc.id][mode].append(run_scenario(sc, path)["samples_per_s"])
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    ratios = {sid: statistics.median(on / off for on, off in zip(v["on"], v["off"])) for sid, v in rates.items()}
    overall = statistics.median(ratios.values())
    doc = {"machine": machine(), "rounds": args.rounds, "rates": rates, "on_over_off": ratios,
           "median_on_over_off": overall}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=1)
    for sid, ratio in ratios.items():
        print(f"{sid[:72]:72} {ratio:6.3f}")
    print(f"median samples/s with the trace on / off: {overall:.3f} ({(1 - overall) * 100:+.1f} % overhead)")


if __name__ == "__main__":
    main()
