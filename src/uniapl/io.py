"""Atomic outputs and run metadata: a crash never leaves a half-written file that DVC would cache."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from uniapl.errors import DataError, MissingPathError


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling path; on success it is renamed onto ``path`` (file or directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | Path, rows) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


def read_jsonl(path: str | Path, keys: tuple[str, ...] = ()) -> list[dict]:
    """The JSON objects of a JSONL file, one per non-blank line, each holding at least ``keys``. A missing
    file, a line that is not a JSON object or lacks one of ``keys`` is a user error naming the file (and
    ``file:line``): :class:`~uniapl.errors.MissingPathError` / :class:`~uniapl.errors.DataError`."""
    rows = []
    try:
        f = open(path)
    except (FileNotFoundError, NotADirectoryError):
        raise MissingPathError(f"{path}: no such file") from None
    with f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{i}: not a JSON object (got {type(row).__name__})")
                missing = [k for k in keys if k not in row]
                if missing:
                    raise DataError(f"{path}:{i}: missing key{'s' * (len(missing) > 1)} {', '.join(missing)}")
                rows.append(row)
    return rows


def exit_fast(code: int = 0) -> None:
    """End a finished stage script without the interpreter's teardown of torch and transformers (about
    2.5 s per process here, x 60 stages): run the atexit handlers (logging, DVCLive, tqdm), flush stdio,
    then ``os._exit(code)``. Call it last, from the ``__main__`` block only (never from library code or a
    test's process), after every output is written. Under torch.distributed it returns (normal exit)."""
    import atexit
    import sys
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_metadata(seed: int, config: dict) -> dict:
    """Resolved config, seed, package versions and git revision, written next to every run's metrics."""
    import tokenizers
    import torch
    import transformers
    return {"seed": seed, "config": config, "git_revision": git_revision(), "python": platform.python_version(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "tokenizers": tokenizers.__version__}, "host": platform.node()}
