"""Helpers of scripts/mutation.sh: generate and sample mutmut's mutants, score a module, survivors.

    python scripts/mutation_tools.py generate                       # in a module's work dir
    python scripts/mutation_tools.py sample META N SEED             # names, one a line
    python scripts/mutation_tools.py score MODULE RESULTS EQUIV SAMPLE LEFT
    python scripts/mutation_tools.py drop-section SURVIVORS MODULE
"""

from __future__ import annotations

import json
import os
import random
import re
import sys

KILLED = ("killed", "timeout")


def generate() -> None:
    """Write mutmut's mutants (and their .meta name lists) without running any test."""
    import mutmut.__main__ as mm

    mm.set_mutant_under_test("mutant_generation")
    os.makedirs("mutants", exist_ok=True)
    mm.copy_src_dir()
    mm.copy_also_copy_files()
    mm.setup_source_paths()
    mm.store_lines_covered_by_tests()
    mm.create_mutants(1)


def sample(meta: str, n: str, seed: str) -> None:
    keys = sorted(json.load(open(meta))["exit_code_by_key"])
    print("\n".join(sorted(random.Random(int(seed)).sample(keys, min(int(n), len(keys))))))


def _equivalent(path: str) -> set[str]:
    names = set()
    for row in open(path):
        name = row.split("#")[0].strip()
        if name:
            names.add(name)
    return names


def score(module: str, results: str, equiv_file: str, sample_file: str, left_file: str) -> None:
    """One table line; the names of the mutants neither killed nor listed as equivalent go to LEFT."""
    chosen = {row.strip() for row in open(sample_file) if row.strip()}
    status = {}
    for row in open(results):
        m = re.match(r"\s*(\S+__mutmut_\d+): (.+)$", row)
        if m and (not chosen or m.group(1) in chosen):
            status[m.group(1)] = m.group(2).strip()
    # An interrupted run leaves some mutants unchecked: they are reported, not scored.
    unchecked = sum(s == "not checked" for s in status.values())
    status = {n: s for n, s in status.items() if s != "not checked"}
    equivalent = _equivalent(equiv_file)
    killed = sum(s in KILLED for s in status.values())
    eq = sum(1 for n, s in status.items() if n in equivalent and s not in KILLED)
    left = sorted(n for n, s in status.items() if s not in KILLED and n not in equivalent)
    with open(left_file, "w") as f:
        f.writelines(f"{n}\t{status[n]}\n" for n in left)
    pct = 100.0 * killed / max(len(status) - eq, 1)
    what = f"sample of {len(status)}" if chosen else "all"
    if unchecked:
        what += f"; {unchecked} not checked"
    print(f"{module:<11}{len(status):>8}{killed:>8}{eq:>12}{len(left):>10}{pct:>8.1f}%  ({what})")


def drop_section(path: str, module: str) -> None:
    text = open(path).read()
    text = re.sub(rf"(?ms)^### {re.escape(module)}\n.*?(?=^### |\Z)", "", text)
    open(path, "w").write(text)


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"generate": generate, "sample": sample, "score": score, "drop-section": drop_section}[cmd](*args)
