#!/usr/bin/env bash
# Mutation testing of the pure-Python core with mutmut (configured in pyproject.toml, [tool.mutmut]).
# Not part of CI: it is slow. Survivors are either killed by a new test or listed, with the reason
# they are equivalent, in docs/mutation.md. Usage: bash scripts/mutation.sh [mutmut run args]
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip install -q 'mutmut==3.8.1'
rm -rf mutants
start=$(date +%s)
# numba's OpenMP threading layer ends a process forked after it started; workqueue's is fork-safe
NUMBA_THREADING_LAYER=workqueue .venv/bin/mutmut run --max-children "${JOBS:-2}" "$@" || true
echo "mutmut run took $(( $(date +%s) - start )) s"
.venv/bin/mutmut results --all true > mutants/results.txt || .venv/bin/mutmut results > mutants/results.txt
python3 - <<'PY'
import collections, re
counts = collections.Counter()
for line in open("mutants/results.txt"):
    m = re.match(r"\s*(\S+): (\w[\w ]*)$", line)
    if m:
        counts[m.group(2).strip()] += 1
checked = sum(v for k, v in counts.items() if k != "not checked")
print("mutants:", dict(counts))
killed = counts.get("killed", 0) + counts.get("timeout", 0)
if checked:
    print(f"killed {killed} of the {checked} checked = {100 * killed / checked:.1f} % "
          "(survivors: `mutmut show NAME`; equivalent ones are listed in docs/mutation.md)")
PY
