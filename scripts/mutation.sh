#!/usr/bin/env bash
# Mutation testing of the core pipeline with mutmut 3 (a measurement, not part of scripts/test).
#
#   scripts/mutation.sh                 # every core module, one after the other
#   scripts/mutation.sh counts select   # only these modules, from scratch
#   scripts/mutation.sh --survivors counts   # after adding tests: rerun only counts' survivors
#
# Each module is mutated on its own, in runs/mutation/<module>/, and only the fast test files listed
# for it below are run against its mutants. The script prints one line per module
#   module  mutants  killed  equivalent  survived  score
# (score = killed / (mutants - equivalent); a timeout counts as killed, "no tests" as survived),
# appends the same line to runs/mutation/scores.txt and writes the surviving mutants, with their
# diffs, to runs/mutation/survivors.txt (one section per module, replaced on each run).
# Equivalent mutants (same behaviour as the original) are listed with a reason in
# scripts/mutation_equivalent.txt; mutant names are mutmut's, e.g. jaxprune.counts.x_num_pruned__mutmut_3
# (they are renumbered when the function they belong to changes).
#
# Needs mutmut (pip install -e '.[mutation]'). PYTHON picks the interpreter (default .venv/bin/python).
# CPU-heavy: runs under `nice -n 10` with MUTATION_WORKERS (default 1) mutants at a time.
# Speed: mutmut's fork server imports JAX, flax, optax and jaxprune once (importing them starts no XLA
# client, so forking stays safe; each mutant's tests run in a fresh fork that compiles for itself),
# and a persistent XLA compilation cache (runs/mutation/jaxcache; keyed by the compiled program, so a
# mutant that changes the program compiles afresh) spares recompiling what a mutant does not touch.
# Hypothesis tests run MUTATION_EXAMPLES (default 10) derandomized examples instead of the suite's 25
# (scripts/mutation_plugin.py).
# MUTATION_SAMPLE=N tests a seeded random sample of N mutants per module (MUTATION_SEED, default 0)
# instead of all of them; the score is then an estimate over the sample (the table line says so).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
MUTMUT="$(dirname "$PY")/mutmut"
WORKERS="${MUTATION_WORKERS:-1}"
if [ ! -x "$MUTMUT" ]; then
  echo "mutation.sh: $MUTMUT not found; install the extra: $PY -m pip install -e '.[mutation]'" >&2
  exit 1
fi

# module -> source file and the fast test files that exercise it.
declare -A SOURCE=(
  [counts]=jaxprune/counts.py
  [select]=jaxprune/select.py
  [ranking]=jaxprune/ranking.py
  [allocate]=jaxprune/allocate.py
  [structures]=jaxprune/structures.py
  [masks]=jaxprune/masks.py
  [paths]=jaxprune/paths.py
  [scores]=jaxprune/scores.py
  [transform]=jaxprune/train/transform.py
  [schedules]=jaxprune/train/schedules.py
)
declare -A TESTS=(
  [counts]="tests/test_counts.py"
  [select]="tests/test_select.py"
  [ranking]="tests/test_ranking.py tests/test_select.py"
  [allocate]="tests/test_allocate.py"
  [structures]="tests/test_structures.py tests/test_registry.py"
  [masks]="tests/test_masks.py"
  [paths]="tests/test_paths.py"
  [scores]="tests/test_scores.py"
  [transform]="tests/test_train.py tests/test_transform_chains.py"
  [schedules]="tests/test_train.py"
)
ORDER=(counts select ranking allocate structures masks paths scores transform schedules)

RERUN=0
if [ "${1:-}" = "--survivors" ]; then RERUN=1; shift; fi
MODULES=("$@")
[ ${#MODULES[@]} -eq 0 ] && MODULES=("${ORDER[@]}")
for m in "${MODULES[@]}"; do
  if [ -z "${SOURCE[$m]:-}" ]; then
    echo "mutation.sh: unknown module '$m' (one of: ${ORDER[*]})" >&2
    exit 2
  fi
done

OUT="$ROOT/runs/mutation"
mkdir -p "$OUT"
EQUIV="$ROOT/scripts/mutation_equivalent.txt"
SURV="$OUT/survivors.txt"
touch "$SURV"

rerun_survivors() {
  # Same mutants as the last run of this module, current test files: only the mutants it left alive
  # run again (a test added since cannot revive a killed mutant), then the module is scored again.
  local m="$1" work="$OUT/$1"
  # shellcheck disable=SC2206
  local tests=(${TESTS[$1]})
  [ -f "$work/left.txt" ] || { echo "mutation.sh: no earlier run of $m to rerun" >&2; return 1; }
  cp "${tests[@]}" tests/helpers.py tests/user_models.py "$work/tests/"
  cp "${tests[@]}" tests/helpers.py tests/user_models.py "$work/mutants/tests/"
  local names=()
  mapfile -t names < <(cut -f1 "$work/left.txt")
  echo "== $m: rerunning ${#names[@]} survivors against ${tests[*]}"
  if [ ${#names[@]} -gt 0 ]; then
    ( cd "$work" && nice -n 10 env JAX_PLATFORMS=cpu JAX_COMPILATION_CACHE_DIR="$OUT/jaxcache" \
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1 \
        "$MUTMUT" run --max-children "$WORKERS" "${names[@]}" ) \
      >> "$work/run.log" 2>&1 || { echo "mutmut failed for $m; see $work/run.log" >&2; return 1; }
  fi
  ( cd "$work" && "$MUTMUT" results --all true ) > "$work/results.txt" 2>&1
  report_module "$m"
}

report_module() {
  local m="$1" work="$OUT/$1"
  local line
  line=$("$PY" scripts/mutation_tools.py score "$m" "$work/results.txt" "$EQUIV" "$work/sample.txt" \
         "$work/left.txt")
  echo "$line"
  echo "$(date -u +%FT%TZ) $line" >> "$OUT/scores.txt"
  "$PY" scripts/mutation_tools.py drop-section "$SURV" "$m"
  { echo "### $m"
    while IFS=$'\t' read -r name st; do
      echo "# $name: $st"
      ( cd "$work" && "$MUTMUT" show "$name" 2>/dev/null | tail -n +2 ) || true
      echo
    done < "$work/left.txt"
  } >> "$SURV"
}

run_module() {
  local m="$1" src="${SOURCE[$1]}" work="$OUT/$1"
  # shellcheck disable=SC2206
  local tests=(${TESTS[$1]})
  local t
  for t in "${tests[@]}"; do [ -f "$t" ] || { echo "mutation.sh: $t missing" >&2; return 1; }; done
  rm -rf "$work"
  mkdir -p "$work"
  cp -r jaxprune "$work/jaxprune"
  cp -r experiments "$work/experiments"  # some run-level tests load experiments/configs/*.py
  cp scripts/mutation_plugin.py "$work/mutation_plugin.py"
  printf "%s\n" numpy jax jax.numpy flax.linen flax.nnx optax chex jaxprune \
    jaxprune.train > "$work/preload.txt"
  mkdir -p "$work/tests"
  cp tests/conftest.py tests/helpers.py tests/user_models.py "$work/tests/"
  cp "${tests[@]}" "$work/tests/"
  find "$work" -name __pycache__ -prune -exec rm -rf {} +
  # The project's pytest settings (warnings are errors, markers) plus this module's mutmut settings.
  # forkserver: mutmut's own process never imports JAX, each mutant runs in a fresh fork, so no
  # jit cache or XLA thread state is shared between mutants.
  { cat pyproject.toml
    echo
    echo "[tool.mutmut]"
    echo "source_paths = [\"jaxprune\"]"
    echo "only_mutate = [\"$src\"]"
    # The folder, not the file names: the work dir's tests/ holds only this module's test files, and
    # a test file added there later (--survivors) is picked up without invalidating the results.
    echo "pytest_add_cli_args_test_selection = [\"tests\"]"
    echo "pytest_add_cli_args = [\"-p\", \"no:cacheprovider\", \"-p\", \"no:xdist\", \"-p\", \"mutation_plugin\"]"
    echo "also_copy = [\"mutation_plugin.py\", \"experiments\"]"
    echo "process_isolation = \"forkserver\""
    echo "forkserver_warmup = \"import\""
    echo "preload_modules_file = \"$work/preload.txt\""
    echo "use_git_change_detection = false"
    # The box is shared: give a slow mutant room before calling it a timeout (a timeout counts as
    # killed, so a tight limit would flatter the score).
    echo "timeout_multiplier = 30.0"
    echo "timeout_constant = 20.0"
  } > "$work/pyproject.toml"

  echo "== $m: mutating $src, tests: ${tests[*]}"
  local names=()
  : > "$work/sample.txt"
  if [ "${MUTATION_SAMPLE:-0}" != "0" ]; then
    ( cd "$work" && "$PY" "$ROOT/scripts/mutation_tools.py" generate ) > "$work/generate.log" 2>&1
    "$PY" scripts/mutation_tools.py sample "$work/mutants/$src.meta" "$MUTATION_SAMPLE" \
      "${MUTATION_SEED:-0}" > "$work/sample.txt"
    mapfile -t names < "$work/sample.txt"
  fi
  ( cd "$work" && nice -n 10 env JAX_PLATFORMS=cpu JAX_COMPILATION_CACHE_DIR="$OUT/jaxcache" \
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1 \
      "$MUTMUT" run --max-children "$WORKERS" "${names[@]}" ) \
    > "$work/run.log" 2>&1 || { echo "mutmut failed for $m; see $work/run.log" >&2; tail -n 20 "$work/run.log" >&2; return 1; }
  ( cd "$work" && "$MUTMUT" results --all true ) > "$work/results.txt" 2>&1

  report_module "$m"
}

printf "%-11s%8s%8s%12s%10s%9s\n" module mutants killed equivalent survived score
for m in "${MODULES[@]}"; do
  if [ "$RERUN" = 1 ]; then rerun_survivors "$m"; else run_module "$m"; fi
done
echo "survivors: $SURV"
