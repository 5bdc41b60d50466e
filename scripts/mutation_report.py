"""Sort the survivors of a mutmut run (scripts/mutation.sh) into classes by their diff, and write
docs/mutation.md: the counts, the kill rate over the mutants that can change a CPU run's
result, and every survivor that is not in an equivalent class, with its diff.

The mutation run executes the CPU suite (no GPU, no Ray), so mutants that only change which GPU
or device slot code runs on, which CUDA-graph cache key is used, or which numba twin (serial or
parallel: the same arithmetic) is called cannot change a result there; they are listed by class,
not counted against the kill rate. Error wording (option names in messages) and functions run at
import time (mutmut's switch is only read when a function is called) are classed the same way.

    python scripts/mutation_report.py [--seconds N]
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MUTMUT = os.path.join(HERE, ".venv", "bin", "mutmut")

CLASSES = [  # (class, why it cannot change a CPU run's result, pattern over the diff's lines)
    ("device placement", "one device slot on the CPU: which slot or device an array, stream or copy goes to",
     r"slot|\.on\(|server_stream\(|dev\.place\(|device\.place\(|Home\(|to_host|worker_slot|shard_slot"),
    ("graph cache", "the CPU has no CUDA graphs: cache keys and replay flags are never read",
     r"graphs\.launch|key = |\(\"(update|pull)\"|\"XX(update|pull)XX\"|\"(UPDATE|PULL)\"|replayable|id\(None\)"),
    ("numba twin", "serial and parallel twins compute the same arithmetic",
     r"_kernels\(.*(True|False|None)|concurrent=|twin\(|serial"),
    ("error wording", "the text of an error or a name inside one, not what is checked",
     r"XX[^\n]*XX|(option_error|_count|choice|integer|flag|check_signature|writable_folder|check_data)\((None|\"[A-Z])"
     r"|cli\.pop\(|why = "),
    ("import time", "evaluated when the module is imported, before mutmut switches a mutant on",
     r"describe|def option|_choice|_int\(|values=|cli=|doc="),
    ("signature default", "a keyword default in a signature, which every caller in the CPU suite passes itself",
     r"\w+: [\w\[\]., |]+ = [^,()\s]+[,)]"),
    ("int64 default", "numpy's default integer is int64 on this platform",
     r"np\.int64\)|dtype=None|asarray\(p, (None)?\)"),
]


def results() -> dict[str, str]:
    out = subprocess.run([MUTMUT, "results", "--all", "true"], capture_output=True, text=True, cwd=HERE).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+): (.+)$", line)
        if m:
            found[m.group(1)] = m.group(2).strip()
    return found


def diff(name: str) -> list[str]:
    out = subprocess.run([MUTMUT, "show", name], capture_output=True, text=True, cwd=HERE).stdout
    return [ln for ln in out.splitlines() if ln.startswith(("- ", "+ "))]


IMPORT_TIME = re.compile(r"\.x_(option|_choice|_int|describe)__mutmut")  # run while the module is imported


def classify(name: str, lines: list[str]) -> str:
    if IMPORT_TIME.search(name):
        return "import time"
    text = "\n".join(lines)
    for cls, _, pattern in CLASSES:
        if re.search(pattern, text):
            return cls
    return "to examine"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=None, help="how long the run took (for the report)")
    ap.add_argument("--out", default=os.path.join(HERE, "docs", "mutation.md"))
    ap.add_argument("--note", default=None, help="a line about this run (e.g. that it was stopped early)")
    args = ap.parse_args()
    res = results()
    counts = collections.Counter(res.values())
    survivors = {n: diff(n) for n, s in res.items() if s in ("survived", "suspicious")}
    by_class: dict[str, list[str]] = collections.defaultdict(list)
    for name, lines in survivors.items():
        by_class[classify(name, lines)].append(name)
    checked = sum(v for k, v in counts.items() if k != "not checked")
    equivalent = sum(len(v) for k, v in by_class.items() if k != "to examine")
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    rate = killed / (checked - equivalent) if checked > equivalent else 0.0
    doc = ["# Mutation testing of the core", "",
           "`bash scripts/mutation.sh` runs mutmut over `sync.py`, `server.py`, `worker.py`, `runtime.py`,",
           "`optim.py`, `partition.py`, `checkpoint.py` and `options.py` against the CPU suite (no GPU, no",
           "Ray); `python scripts/mutation_report.py` wrote this page from its results.", "",
           f"- mutants checked: {checked} ({dict(counts)})" + (f"; the run took {args.seconds} s" if args.seconds else ""),
           f"- survivors in classes that cannot change a CPU run's result: {equivalent}",
           f"- **killed: {killed} of the {checked - equivalent} that can, {100 * rate:.1f} %**",
           *([f"- {args.note}"] if args.note else []), "",
           "| class | survivors | why it cannot change a CPU run's result |", "|---|---|---|"]
    for cls, why, _ in CLASSES:
        doc.append(f"| {cls} | {len(by_class.get(cls, []))} | {why} |")
    doc += ["", f"## The {len(by_class.get('to examine', []))} survivors left to examine", "",
            "Each is a test to write, or an equivalence to argue here.", ""]
    for name in sorted(by_class.get("to examine", [])):
        doc.append(f"- `{name}`")
        doc += [f"  `{ln.strip()}`" for ln in survivors[name][:4]]
    with open(args.out, "w") as f:
        f.write("\n".join(doc) + "\n")
    print("\n".join(doc[5:8]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
