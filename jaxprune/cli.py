"""The ``jaxprune`` command.

    jaxprune run CONFIG [key=value ...] --workdir DIR
    jaxprune sweep SWEEP_FILE --workdir DIR [key=value ...] [--shard I/N] [--no-vmap] [--no-progress]
    jaxprune report DIR [--best] [--max-drop PP] [--max-ppl-increase PCT] [--log-x]

User errors (bad config, unknown dataset, missing files, bad values: :class:`~jaxprune.errors.
JaxpruneError`) print one ``error:`` line and exit with status 2, without a traceback; any other
exception is a bug and keeps its traceback. ``JAXPRUNE_DEBUG=1`` re-raises user errors too, with
their traceback. Bad input is found before data loads: the config file, its fields
(:mod:`jaxprune.harness.schema`) and the workdir are checked first. A full disk (``ENOSPC``, found
anywhere in the exception chain, :func:`jaxprune.errors.disk_full`) is one ``error:`` line too, the
last line of stderr: orbax's log records and the tracebacks its failed save threads leave are dropped.

On start the command calls :func:`jaxprune.hostmem.keep_freed_memory` (glibc keeps the memory freed
by XLA's per-step buffers for reuse; ``JAXPRUNE_MALLOC=default`` turns it off).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from typing import Callable, Optional, Sequence

__all__ = ["main"]


def _run(args: argparse.Namespace) -> int:
    from jaxprune.config import apply_overrides, load_config
    from jaxprune.data import resolve_dataset
    from jaxprune.experiment import check_workdir, format_result, train_and_evaluate, validate_config

    check_workdir(args.workdir)
    config = apply_overrides(load_config(args.config), args.overrides)
    validate_config(config)  # every field, before the data set is looked for
    if args.no_progress:
        with config.unlocked():
            config.progress = False
    if config.get("dataset") == "auto" and config.get("kind", "nn") == "nn":  # lm resolves its own
        config.dataset = resolve_dataset("auto", config.get("data_dir"),
                                         note=lambda line: print(f"[jaxprune] {line}", file=sys.stderr))
    result = train_and_evaluate(config, args.workdir)
    print(format_result(result))
    print(f"[jaxprune] wrote {os.path.join(args.workdir, 'result.json')}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from jaxprune.sweep.runner import parse_shard, run_sweep
    from jaxprune.sweep.spec import expand_all, load_sweep

    from jaxprune.harness.results import check_workdir

    shard = parse_shard(args.shard) if args.shard else (0, 1)
    check_workdir(args.workdir)
    configs = expand_all(load_sweep(args.sweep_file), args.overrides)
    # XLA's persistent cache: every run compiles the same programs again (see docs/sweeps.md).
    cache = os.environ.get("JAXPRUNE_COMPILATION_CACHE", os.path.join(args.workdir, ".jax_cache"))
    out = run_sweep(configs, args.workdir, shard=shard, vmap=not args.no_vmap,
                    progress=not args.no_progress,
                    compilation_cache=None if cache.lower() in ("", "0", "off", "none") else cache)
    print(f"[jaxprune] sweep {args.sweep_file}: {len(configs)} runs"
          + (f", shard {shard[0]}/{shard[1]} has {out.planned}" if shard[1] > 1 else "")
          + f"; {out.skipped} already done, {out.ran} ran now -> {out.path}")
    print(f"[jaxprune] next: jaxprune report {args.workdir}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from jaxprune.errors import DataError
    from jaxprune.sweep.best import best_strategy
    from jaxprune.sweep.report import write_report

    if not os.path.isdir(args.dir):
        raise DataError(f"report: {args.dir!r} is not a directory")
    rep = write_report(args.dir, log_x=args.log_x)
    print(rep.table)
    if args.best:
        print()
        for best in best_strategy(rep.rows, max_drop=args.max_drop, max_increase=args.max_ppl_increase):
            print(best.line())
    print()
    print(f"[jaxprune] wrote {rep.csv}, {rep.markdown}")
    for path in rep.plots:
        print(f"[jaxprune] plot: {path}")
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

    sweep = sub.add_parser("sweep", help="run every config of a sweep file (resumable)")
    sweep.add_argument("sweep_file", help="Python file with get_sweep()")
    sweep.add_argument("overrides", nargs="*", help="key=value overrides of the base config")
    sweep.add_argument("--workdir", required=True, help="directory for results*.jsonl and runs/")
    sweep.add_argument("--shard", default=None, metavar="I/N", help="run only runs with index %% N == I")
    sweep.add_argument("--no-vmap", action="store_true", help="never train runs together")
    sweep.add_argument("--no-progress", action="store_true", help="hide the per-run training bars")
    sweep.set_defaults(func=_sweep)

    report = sub.add_parser("report", help="summary.csv, report.md and plots of a sweep directory")
    report.add_argument("dir", help="the sweep's --workdir")
    report.add_argument("--best", action="store_true",
                        help="print the most compressed strategy within --max-drop (LM: --max-ppl-increase) of dense, per model")
    report.add_argument("--max-drop", type=float, default=1.0, metavar="PP",
                        help="allowed accuracy drop in percentage points (default 1.0)")
    report.add_argument("--max-ppl-increase", type=float, default=5.0, metavar="PCT",
                        help="language-model sweeps: allowed validation-perplexity increase over dense, "
                             "in percent (default 5.0)")
    report.add_argument("--log-x", action="store_true",
                        help="plot remaining weights (%%) on a log axis (lottery-ticket style)")
    report.set_defaults(func=_report)
    return parser


class _QuietAfterDiskFull(logging.Filter):
    """Drops log records about a full disk, and every record after the first one: orbax's background
    save threads then fail one after another, each logging a traceback (~360 lines), which would bury
    the one ``error:`` line. Any other record passes."""

    def __init__(self, disk_full: Callable[[Optional[BaseException]], Optional[OSError]]):
        super().__init__()
        self.disk_full, self.full = disk_full, False

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.full:
            exc = record.exc_info[1] if record.exc_info else None
            self.full = self.disk_full(exc) is not None or f"[Errno {errno.ENOSPC}]" in record.getMessage()
        return not self.full


def _error_line(message: str) -> None:
    # One line, whatever the message: the first line of stderr that says `error:` is all of it.
    print("error: " + " ".join(line.strip() for line in message.splitlines() if line.strip()),
          file=sys.stderr, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``jaxprune`` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow the options (``sweep FILE --workdir D epochs=1``).
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from jaxprune.errors import JaxpruneError, disk_full

    quiet = _QuietAfterDiskFull(disk_full)
    absl_log, unraisable = logging.getLogger("absl"), sys.unraisablehook  # orbax logs through absl
    absl_log.addFilter(quiet)
    # orbax's event loops, closed under a failed save, leave "Event loop is closed" tracebacks that
    # Python reports as unraisable (some while the process exits): after a full disk they are noise.
    sys.unraisablehook = lambda hook_args: None if quiet.full else unraisable(hook_args)
    try:
        from jaxprune.hostmem import keep_freed_memory
        keep_freed_memory()
        return args.func(args)
    except JaxpruneError as err:  # the kit's own errors: bad input, not a bug (those keep a traceback)
        if os.environ.get("JAXPRUNE_DEBUG") == "1":
            raise
        _error_line(str(err))
        return 2
    except Exception as err:  # noqa: BLE001 - only a full disk is handled; anything else re-raises
        full = disk_full(err)
        if full is None or os.environ.get("JAXPRUNE_DEBUG") == "1":
            raise
        quiet.full = True  # what orbax's threads still log while the process ends is dropped too
        _error_line(f"no space left on device (writing {full.filename or 'a file'!s}); free space "
                    "there and run the command again (a sweep skips the runs it has recorded)")
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if not quiet.full:  # after a full disk both stay: the process is ending, quietly
            absl_log.removeFilter(quiet)
            sys.unraisablehook = unraisable


if __name__ == "__main__":
    sys.exit(main())
