"""Where the time of a zoo model goes, dense and shrunk: XLA:CPU per-op (thunk) times, side by side.

Answers "why is the pruned model not as much faster as its FLOPs say": each compiled op (a fusion,
a dot, a convolution) is timed by XLA's own profiler events (``--xla_cpu_enable_xprof_traceme``),
grouped by what it computes (the layer paths of its ops, with block numbers removed, so the four
``blocks_<i>/fc`` dots are one row), for the dense model and the same model with 50 % of its groups
removed by ``jaxprune.prune_structured``, in alternating rounds (the box's speed drifts), medians.
Prints one JSON line per row: dense ms, shrunk ms, their ratio, then a total; thunks overlap on the
2 cores, so the total is CPU time, not wall time.

    python scripts/profile_thunks.py vit --batch 256
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import glob  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxprune.models import MLP  # noqa: E402
from jaxprune.models.vit import ViT  # noqa: E402
from jaxprune.shrink.fastattn import fast_attention  # noqa: E402
from jaxprune.shrink.fastconv import fast_convs  # noqa: E402
from jaxprune.structure import prune_structured  # noqa: E402

ZOO = {"vit": lambda: ViT(10), "mlp_784_128": lambda: MLP((128, 10)), "lenet300": lambda: MLP((300, 100, 10))}
SHAPE = (28, 28, 1)
_RUNTIME = ("ThunkExecutor", "$", "Slinky", "Pjit", "CommonPjRt", "ParseArguments")


def _what(hlo: str) -> dict[str, str]:
    """Thunk name -> a label from the op_name metadata of the computation it runs."""
    calls, ops, current = {}, collections.defaultdict(set), None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?(\S+) .*\{$", line)
        if head:
            current = head.group(1)
            continue
        called = re.match(r"\s*(?:ROOT )?%(\S+) = .*?calls=%([^,\s]+)", line)
        if called:
            calls[called.group(1)] = called.group(2)
        name = re.search(r'op_name="([^"]+)"', line)
        if current and name:
            path = re.sub(r"^jit\([^)]*\)/(?:[A-Z]\w*/)*", "", name.group(1))  # ViT/, ViT/ViT/
            ops[current].add(re.sub(r"blocks_\d+", "blocks_*", path))
    label = {}
    for thunk, comp in calls.items():
        names = sorted(ops.get(comp, ()))
        label[thunk] = " | ".join(n[:34] for n in names[:3]) + (" ..." if len(names) > 3 else "")
    return label


def compiled(model, variables, batch: int):
    """The jitted forward pass (fast_convs + fast_attention), compiled and warmed up, and its input."""
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, *SHAPE))
    with fast_convs(), fast_attention():
        fn = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x).compile()
    for _ in range(10):
        fn(variables, x).block_until_ready()
    return fn, x


def profile(fn, variables, x, calls: int = 20) -> dict[str, float]:
    """Per-label milliseconds per call of ``fn(variables, x)``, from one profiler trace."""
    with tempfile.TemporaryDirectory() as where:
        with jax.profiler.trace(where, create_perfetto_trace=True):
            for _ in range(calls):
                fn(variables, x).block_until_ready()
        trace = json.load(gzip.open(glob.glob(f"{where}/**/*.trace.json.gz", recursive=True)[0]))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    label, ms = _what(fn.as_text()), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(_RUNTIME):
            ms[label.get(e["name"], e["name"])] += e.get("dur", 0) / 1000 / calls
    return dict(ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(ZOO))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model = ZOO[args.model]()
    x = jnp.zeros((1, *SHAPE))
    v = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    small, sv = prune_structured(model, v, x, 0.5)
    fns = {"dense": (*compiled(model, v, args.batch), v), "shrunk": (*compiled(small, sv, args.batch), sv)}
    runs = {"dense": [], "shrunk": []}
    for _ in range(args.rounds):
        for name, (fn, x, variables) in fns.items():
            runs[name].append(profile(fn, variables, x))
    dense, shrunk = ({k: statistics.median(r.get(k, 0.0) for r in rs) for k in set().union(*rs)}
                     for rs in (runs["dense"], runs["shrunk"]))
    for what in sorted(dense, key=dense.get, reverse=True)[:args.top]:
        d, s = dense[what], shrunk.get(what, 0.0)
        print(json.dumps({"ops": what, "dense_ms": round(d, 3), "shrunk_ms": round(s, 3),
                          "ratio": round(d / s, 2) if s else None}))
    d, s = sum(dense.values()), sum(shrunk.values())
    print(json.dumps({"ops": "total (CPU time of all thunks)", "dense_ms": round(d, 3),
                      "shrunk_ms": round(s, 3), "ratio": round(d / s, 2)}))


if __name__ == "__main__":
    main()
