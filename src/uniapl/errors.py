"""Errors in the user's input (a params key, a data line, a missing path): reported in one line, no traceback.

The bottom of the import graph: imports nothing of ``uniapl`` and no torch.

A stage script runs its ``main`` through :func:`run_stage`: a :class:`UserError` (a bad ``params.yaml`` key
or value, a malformed JSONL line, a missing model or data path, a bad command-line value) ends the process
with ``error: <message>`` on stderr and exit status 2 (argparse's status for a bad command line), without a
traceback; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

EXIT_USER_ERROR = 2
"""Exit status of a stage script stopped by a UserError (argparse uses 2 for a bad command line too)."""


class UserError(Exception):
    """A mistake in the user's input; the message names the file and line, or the key, and the rule."""


class DataError(UserError, ValueError):
    """A data file with a malformed record; the message names ``file:line`` and what is wrong."""


class MissingPathError(UserError, FileNotFoundError):
    """A file or directory named by the user (or the pipeline) that is not there; the message names the path
    and, where known, the stage that makes it."""


def run_stage(main, *args, **kwargs):
    """``main(*args, **kwargs)``; a UserError prints ``error: <message>`` to stderr and exits with status 2,
    without a traceback. Everything else (a bug) propagates unchanged."""
    try:
        return main(*args, **kwargs)
    except UserError as e:
        sys.stdout.flush()
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
