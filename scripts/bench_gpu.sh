#!/usr/bin/env bash
# Run the three benchmarks (masked train step, mask-update step, exact global selection) on the GPU and
# print one JSON line each on stdout (progress notes go to stderr).
#
#   scripts/bench_gpu.sh          # on the GPU; fails if JAX sees no GPU (pip install -U "jax[cuda12]")
#   scripts/bench_gpu.sh --cpu    # on the CPU (JAX_PLATFORMS=cpu), fewer steps/repeats: a smoke run
#
# The scripts take only step/repeat counts, not sizes: the models (LeNet-300-100, a 1024-wide MLP,
# ResNet-50's 25.6 M parameter shapes) are the same on both, so --cpu takes a few minutes.
source "$(dirname "$0")/_env.sh"

case "${1:-}" in
  --cpu)
    export JAX_PLATFORMS=cpu
    STEP=(--steps 50); UPDATE=(--steps 10); SELECT=(--repeats 1) ;;
  "")
    STEP=(); UPDATE=(); SELECT=()
    backend="$(python -c 'import jax; print(jax.default_backend())' 2>/dev/null || true)"
    if [ "$backend" != "gpu" ]; then
      echo "bench_gpu.sh: JAX sees no GPU (default backend: ${backend:-none})." >&2
      echo "  Install a CUDA build of JAX (pip install -U \"jax[cuda12]\") or run with --cpu." >&2
      exit 1
    fi ;;
  -h|--help)
    sed -n '2,9p' "$0"; exit 0 ;;
  *)
    echo "bench_gpu.sh: unknown argument '$1' (use --cpu or nothing)" >&2; exit 2 ;;
esac

run() {
  local script="$1"; shift
  echo "[bench_gpu] scripts/$script $*" >&2
  # The scripts print exactly one JSON line; keep only that (e.g. not a warning on stdout).
  python "scripts/$script" "$@" | grep '^{'
}
run bench_step.py "${STEP[@]}"
run bench_update.py "${UPDATE[@]}"
run bench_select.py "${SELECT[@]}"
