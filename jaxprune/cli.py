"""The ``jaxprune`` command: ``jaxprune run CONFIG [key=value ...] --workdir DIR``.

User errors (bad config, unknown dataset, missing files, bad values) print one ``error:`` line and
exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

__all__ = ["main"]


def _run(args: argparse.Namespace) -> int:
    from jaxprune.config import apply_overrides, load_config
    from jaxprune.experiment import format_result, train_and_evaluate

    config = apply_overrides(load_config(args.config), args.overrides)
    if args.no_progress:
        with config.unlocked():
            config.progress = False
    if config.get("dataset") == "auto":
        from jaxprune.experiment import resolve_dataset
        chosen = resolve_dataset("auto", config.get("data_dir"))
        print(f"[jaxprune] dataset=auto -> {chosen}" + (
            "" if chosen == "fashion_mnist" else
            " (Fashion-MNIST files not found; `apt-get install dataset-fashion-mnist` or set "
            "JAXPRUNE_DATA)"), file=sys.stderr)
        config.dataset = chosen
    result = train_and_evaluate(config, args.workdir)
    print(format_result(result))
    print(f"[jaxprune] wrote {os.path.join(args.workdir, 'result.json')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxprune", description="Functional pruning for JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train, prune, fine-tune and evaluate one config")
    run.add_argument("config", help="Python file with get_config()")
    run.add_argument("overrides", nargs="*", help="key=value overrides of config fields")
    run.add_argument("--workdir", required=True, help="directory for result.json")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.set_defaults(func=_run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``jaxprune`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # PruningError / DataError / ConfigError and other bad values
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
