"""jaxprune.hostmem: the glibc allocator settings the jaxprune command applies."""

import pytest

from jaxprune import hostmem
from jaxprune.errors import ConfigError


class _Recorder:
    def __init__(self, result=1):
        self.calls, self.result = [], result

    def __call__(self, param, value):
        self.calls.append((param, value))
        return self.result


@pytest.fixture
def recorder(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(hostmem, "_glibc_mallopt", lambda: rec)
    monkeypatch.delenv("JAXPRUNE_MALLOC", raising=False)
    return rec


def test_sets_both_thresholds(recorder):
    assert hostmem.keep_freed_memory(trim_threshold=5 << 20, mmap_threshold=1 << 20) is True
    assert recorder.calls == [(-3, 1 << 20), (-1, 5 << 20)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD


def test_refused_value_reports_false(recorder):
    recorder.result = 0
    assert hostmem.keep_freed_memory() is False
    assert len(recorder.calls) == 2  # both still attempted


def test_env_default_changes_nothing(recorder, monkeypatch):
    monkeypatch.setenv("JAXPRUNE_MALLOC", "default")
    assert hostmem.keep_freed_memory() is False
    assert recorder.calls == []


def test_bad_env_value_names_the_variable(recorder, monkeypatch):
    monkeypatch.setenv("JAXPRUNE_MALLOC", "tcmalloc")
    with pytest.raises(ConfigError, match="JAXPRUNE_MALLOC"):
        hostmem.keep_freed_memory()


def test_not_glibc_is_a_no_op(monkeypatch):
    monkeypatch.setattr(hostmem, "_glibc_mallopt", lambda: None)
    monkeypatch.delenv("JAXPRUNE_MALLOC", raising=False)
    assert hostmem.keep_freed_memory() is False


@pytest.mark.parametrize("field,value", [("mmap_threshold", 2**31), ("mmap_threshold", -1),
                                         ("trim_threshold", 2**31), ("trim_threshold", 1.5),
                                         ("trim_threshold", True)])
def test_bad_thresholds_name_the_field(recorder, field, value):
    with pytest.raises(ConfigError, match=field):
        hostmem.keep_freed_memory(**{field: value})
    assert recorder.calls == []


def test_real_glibc_accepts_the_defaults():
    # Sets the process's allocator like the CLI does (harmless for the rest of the suite).
    mallopt = hostmem._glibc_mallopt()
    if mallopt is None:
        pytest.skip("not glibc")
    assert mallopt(-3, 32 << 20) == 1 and mallopt(-1, 1 << 30) == 1


def test_cli_applies_it(monkeypatch, tmp_path):
    from jaxprune import cli

    calls = []
    monkeypatch.setattr(hostmem, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["report", str(tmp_path / "missing")]) == 2  # a user error, after the setting
    assert calls == [1]
