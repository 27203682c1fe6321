"""Every example in the project runs (issue 15, item 10).

* Every docstring example of every module of the ``jaxprune`` package, found by walking the package
  directory (not a hand-picked list): one case per module, so a failure names it. A module that fails
  to import fails its case too.
* Every fenced ``python`` block of README.md and docs/*.md: one case per block, named ``file:line``.
  The blocks of one file run in order in one shared namespace, as a reader runs them. A block that is
  not meant to run says so on the line just above its fence: ``<!-- no-run: the reason -->``; it is
  reported as skipped with that reason (``pytest -ra`` lists them, ``test_markdown_block_inventory``
  prints the counts).
* Every ``jaxprune.a.b`` / ``jp.a.b`` name the markdown mentions exists, checked in a fresh interpreter
  (``jp.a`` must be an attribute after ``import jaxprune as jp``; ``jaxprune.a.b`` may import ``a``).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path
from typing import NamedTuple, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxprune"
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NO_RUN = re.compile(r"^\s*<!--\s*no-run:\s*(?P<reason>.*?)\s*-->\s*$")
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


# --------------------------------------------------------------------------- docstrings


def package_modules(directory: Path = PACKAGE, prefix: str = "jaxprune") -> list[str]:
    """Dotted names of the package and every module and subpackage under it, without importing any."""
    names = [prefix]
    for info in pkgutil.iter_modules([str(directory)]):
        name = f"{prefix}.{info.name}"
        if info.ispkg:
            names += package_modules(directory / info.name, name)
        else:
            names.append(name)
    return names


MODULES = package_modules()


def test_module_walk_finds_every_source_file():
    # The walk must not silently skip a file (e.g. a subpackage without __init__.py).
    on_disk = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert on_disk == set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder(exclude_empty=True).find(module, name) if t.examples]
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} docstring examples failed (output above)"


# --------------------------------------------------------------------------- markdown blocks


class Block(NamedTuple):
    path: Path
    line: int  # 1-based line of the opening fence
    source: str
    skip: Optional[str]  # the no-run reason, or None

    @property
    def name(self) -> str:
        where = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path.name
        return f"{where}:{self.line}"


def markdown_blocks(path: Path) -> list[Block]:
    """The fenced ``python`` blocks of one markdown file, in order, with their no-run markers."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(`{3,}|~{3,})\s*(\w*)", lines[i])
        if not fence:
            i += 1
            continue
        indent, ticks, lang = fence.groups()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(ticks):
            j += 1
        if lang == "python":
            body = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:j])
            marker = NO_RUN.match(lines[i - 1]) if i > 0 else None
            blocks.append(Block(path, i + 1, body + "\n", marker.group("reason") if marker else None))
        i = j + 1
    return blocks


BLOCKS = [b for path in MARKDOWN for b in markdown_blocks(path)]
_namespaces: dict[Path, dict] = {}
_ran: dict[Path, int] = {}  # per file: how many of its blocks have run in its namespace


def _run_block(block: Block, namespace: dict) -> None:
    if ">>>" in block.source:  # a doctest-style block: check its printed output too
        test = doctest.DocTestParser().get_doctest(block.source, namespace, block.name, str(block.path),
                                                   block.line)
        runner = doctest.DocTestRunner(optionflags=OPTIONS)
        runner.run(test, clear_globs=False)
        assert runner.failures == 0, f"{block.name}: {runner.failures} example(s) failed (output above)"
    else:
        # Compiled with the block's own line numbers so a traceback points into the markdown file.
        code = compile("\n" * (block.line) + block.source, str(block.path), "exec")
        exec(code, namespace)  # noqa: S102 - running the documentation is the point


def _run_in_order(block: Block) -> None:
    """Runs the blocks of ``block``'s file before it (once), then ``block``, in the file's namespace."""
    own = [b for b in BLOCKS if b.path == block.path]
    index = own.index(block)
    namespace = _namespaces.setdefault(block.path, {"__name__": "__docs__"})
    if _ran.get(block.path, 0) > index:  # selected again (e.g. a rerun): start the file afresh
        namespace.clear()
        namespace["__name__"] = "__docs__"
        _ran[block.path] = 0
    for earlier in own[_ran.get(block.path, 0):index]:
        if earlier.skip is None:
            _run_block(earlier, namespace)
    _ran[block.path] = index + 1
    _run_block(block, namespace)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_markdown_block_runs(block, tmp_path, monkeypatch):
    if block.skip is not None:
        pytest.skip(f"no-run: {block.skip}")
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    _run_in_order(block)


def test_markdown_block_inventory(capsys):
    skipped = [b for b in BLOCKS if b.skip is not None]
    for path in MARKDOWN:  # a marker must sit right above a python block and give a reason
        lines = path.read_text().splitlines()
        for n, line in enumerate(lines):
            if re.match(r"^\s*<!--\s*no-run", line):
                assert NO_RUN.match(line) and NO_RUN.match(line).group("reason"), \
                    f"{path.relative_to(ROOT)}:{n + 1}: write the reason: <!-- no-run: why -->"
                assert n + 1 < len(lines) and re.match(r"^\s*(`{3,}|~{3,})\s*python", lines[n + 1]), \
                    f"{path.relative_to(ROOT)}:{n + 1}: a no-run marker must be on the line above a python block"
    with capsys.disabled():
        print(f"\n[docs] {len(BLOCKS)} python blocks in {len(MARKDOWN)} markdown files: "
              f"{len(BLOCKS) - len(skipped)} run, {len(skipped)} marked no-run"
              + "".join(f"\n  {b.name}: {b.skip}" for b in skipped))
    assert BLOCKS, "no python blocks found: the markdown walk is broken"


# Names the docs mention (`jaxprune.train.snapshot`, `jp.train.pruning`, ...), checked in a fresh
# interpreter: this process has imported every module above, which would make any `jp.X` resolve.
_NAMES_SCRIPT = r"""
import importlib, json, re, sys
import jaxprune as jp
found = json.loads(sys.argv[1])
bad = []
# `jp.` names first: importing a submodule for a `jaxprune.a.b` name would make `jp.a` resolve.
for name, where in sorted(found.items(), key=lambda item: (not item[0].startswith("jp."), item[0])):
    head, *parts = name.split(".")
    obj, mod = jp, "jaxprune"
    for part in parts:
        if hasattr(obj, part):
            obj, mod = getattr(obj, part), f"{mod}.{part}"
            continue
        try:  # `jaxprune.a.b` in prose: a reader imports the submodule; `jp.a` must be an attribute
            if head == "jp":
                raise ImportError(name)
            obj = importlib.import_module(f"{mod}.{part}")
            mod = f"{mod}.{part}"
        except ImportError:
            bad.append(f"{where}: {name}")
            break
print(json.dumps(bad))
"""


def test_names_in_docs_exist():
    import json
    import subprocess
    import sys

    pattern = re.compile(r"(?<![\w/.-])(?:jaxprune|jp)(?:\.[A-Za-z_]\w*)+")
    found: dict[str, str] = {}
    for path in MARKDOWN:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in pattern.finditer(line):
                found.setdefault(m.group(0), f"{path.relative_to(ROOT)}:{n}")
    assert "jaxprune.train.pruning" in found or "jp.train.pruning" in found  # the walk reads the docs
    proc = subprocess.run([sys.executable, "-c", _NAMES_SCRIPT, json.dumps(found)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [], "names in the docs that do not exist"


def test_markdown_parser_reads_fences_and_markers(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("text\n```python\na = 1\n```\n<!-- no-run: needs a GPU -->\n```python\nb = 2\n```\n"
                   "```bash\nls\n```\n  ```python\n  c = a + 1\n  ```\n")
    blocks = markdown_blocks(doc)
    assert [(b.line, b.source, b.skip) for b in blocks] == [
        (2, "a = 1\n", None), (6, "b = 2\n", "needs a GPU"), (12, "c = a + 1\n", None)]


def test_a_failing_block_fails(tmp_path):
    block = Block(tmp_path / "x.md", 3, "import jaxprune as jp\njp.no_such_function\n", None)
    with pytest.raises(AttributeError):
        _run_block(block, {})
    bad_doctest = Block(tmp_path / "x.md", 3, ">>> 1 + 1\n3\n", None)
    with pytest.raises(AssertionError, match="1 example"):
        _run_block(bad_doctest, {})


def test_the_test_durations_name_existing_files():
    """tests/durations.json (the slowest-first order of scripts/test, tests/conftest.py) lists test
    files that exist, with seconds >= 0; refresh it with JAXPRUNE_RECORD_DURATIONS after renames."""
    import json

    seconds = json.loads((ROOT / "tests" / "durations.json").read_text())
    assert seconds and all(v >= 0 for v in seconds.values())
    missing = [f for f in seconds if not (ROOT / f).is_file()]
    assert not missing, missing
