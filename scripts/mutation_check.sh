#!/usr/bin/env bash
# Mutation check of the modules that carry the method ([tool.mutmut] in pyproject.toml lists them and their
# fast tests): every mutant of model/network, model/boxes, model/loss, training/checkpoints, evaluation/metrics
# and atomic is run against those tests.
# Needs `pip install -r requirements-dev.txt` (mutmut; not in requirements.txt, as it pulls textual and libcst).
# Takes a few minutes on 2 cores and writes mutants/ (ignored by git).
# Ends with the count per outcome; `mutmut show <name>` prints a surviving mutant's diff.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
mutmut="${VIRTUAL_ENV:-.venv}/bin/mutmut"
rm -rf mutants
"$mutmut" run --max-children "${MUTMUT_CHILDREN:-2}" >/dev/null
"$mutmut" results --all true | awk '{print $NF}' | sort | uniq -c
"$mutmut" results
