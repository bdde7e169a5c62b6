"""Instruction-following training prompts in IFEval's format, from a file or a `datasets` dataset: read,
validate every row against the IFEval checkers, drop prompts that overlap the evaluation sets, split into
train / validation pools (the ``prompts`` stage). Rows are numbered from 1 in the order read (in a JSONL
file, its non-blank lines; a line that is not a JSON object is named ``file:line``).

A row is ``prompt`` (str), ``instruction_id_list`` (list of ids) and ``kwargs`` (one dict per id), as in
IFEval's ``input_data.jsonl``, ``argilla/ifeval-like-data`` (its filtered config) or IFBench's training
prompts; other columns are kept. A row is rejected, with its source and 1-based row number in the error
and nothing written, when:

* a key is missing or has the wrong type, or ``kwargs`` and ``instruction_id_list`` differ in length;
* an instruction id is not in lm-evaluation-harness's IFEval registry;
* the checker rejects its kwargs (``build_description`` raises: an unknown argument, a relation other than
  "less than" / "at least", ...), or the kwargs leave out an argument the checker takes: the harness would
  then draw a random value for it at every scoring, so the row's reward would not be a function of its text.
  Falsy values count as absent, as in the harness (it drops them before ``build_description``).

Overlap: a training prompt whose normalised text (lowercase, whitespace collapsed) equals that of any
evaluation prompt is removed (exact match after normalisation, our rule [ours]).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from uniapl.errors import DataError, MissingPathError

KEYS = ("prompt", "instruction_id_list", "kwargs")


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def load_rows(source: str, split: str = "train", config: str | None = None) -> tuple[list[dict], str]:
    """Rows of ``source``: a ``.jsonl`` / ``.json`` / ``.parquet`` file, or else a `datasets` name or local
    dataset directory (``datasets.load_dataset(source, config, split=split)``; offline in this project's
    tests and embedded default). Returns the rows and a label for error messages."""
    p = Path(source)
    if p.suffix == ".jsonl":  # errors name file:line, as every JSONL reader of the project
        from uniapl.io import read_jsonl
        return read_jsonl(p), source
    if p.suffix in (".json", ".parquet"):
        if not p.is_file():
            raise MissingPathError(f"{source}: no such file (prompts.source)")
        import datasets
        ds = datasets.load_dataset("json" if p.suffix == ".json" else "parquet", data_files=str(p), split="train")
        return [dict(r) for r in ds], source
    import datasets
    try:
        ds = datasets.load_dataset(source, config, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; the user needs the message
        raise DataError(f"{source}: cannot load the dataset (config {config!r}, split {split!r}): "
                        f"{str(e).splitlines()[0]}") from None
    return [dict(r) for r in ds], f"{source}[{split}]"


def _kwargs_problem(instruction_id: str, kwargs: dict) -> str | None:
    """Why the IFEval checker of ``instruction_id`` cannot take ``kwargs`` deterministically (None: it can)."""
    from uniapl.ifeval import INSTRUCTION_REGISTRY
    checker = INSTRUCTION_REGISTRY[instruction_id](instruction_id)
    given = {k: v for k, v in kwargs.items() if v}
    try:
        wanted = list(checker.get_instruction_args_keys())
    except Exception:  # noqa: BLE001
        wanted = []
    missing = [k for k in wanted if k not in given and k != "prompt"]
    unknown = [k for k in given if k not in wanted]
    if unknown:
        return f"unknown argument(s) {unknown} (the checker takes {wanted})"
    if missing:
        return f"missing argument(s) {missing}: the checker would draw them at random"
    state = random.getstate()  # build_description may touch the global RNG: leave it as it was
    try:
        checker.build_description(**given)
    except Exception as e:  # noqa: BLE001 - the checker's own validation error, passed on
        return f"rejected by the checker: {type(e).__name__}: {e}"
    finally:
        random.setstate(state)
    return None


def validate_rows(rows: list[dict], label: str) -> list[dict]:
    """Check every row (see the module docstring); the first bad one raises :class:`DataError` naming
    ``label`` and its 1-based row number. Returns the rows with ``kwargs`` as plain dicts."""
    from uniapl.ifeval import INSTRUCTION_REGISTRY
    out = []
    for n, row in enumerate(rows, 1):
        where = f"{label}: row {n}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object, got {type(row).__name__}")
        for k in KEYS:
            if k not in row:
                raise DataError(f"{where}: missing key {k!r}")
        prompt, ids, kwargs = row["prompt"], row["instruction_id_list"], row["kwargs"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: 'prompt' must be a non-empty string")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise DataError(f"{where}: 'instruction_id_list' must be a non-empty list of strings")
        if isinstance(kwargs, str):  # some exports store each row's kwargs as a JSON string
            try:
                kwargs = json.loads(kwargs)
            except json.JSONDecodeError:
                raise DataError(f"{where}: 'kwargs' is a string that is not JSON") from None
        if not isinstance(kwargs, list) or not all(isinstance(k, dict) for k in kwargs):
            raise DataError(f"{where}: 'kwargs' must be a list of objects")
        if len(kwargs) != len(ids):
            raise DataError(f"{where}: 'kwargs' has {len(kwargs)} entries but 'instruction_id_list' has {len(ids)}")
        for i, kw in zip(ids, kwargs):
            if i not in INSTRUCTION_REGISTRY:
                raise DataError(f"{where}: unknown instruction id {i!r} (not in lm-eval's IFEval registry)")
            problem = _kwargs_problem(i, kw)
            if problem:
                raise DataError(f"{where}: {i}: {problem}")
        out.append({**row, "kwargs": [dict(k) for k in kwargs]})
    return out


def remove_overlap(rows: list[dict], eval_prompts: list[str]) -> tuple[list[dict], int]:
    """Rows whose normalised prompt is not an evaluation prompt's; and how many were removed."""
    held = {normalise(p) for p in eval_prompts}
    kept = [r for r in rows if normalise(r["prompt"]) not in held]
    return kept, len(rows) - len(kept)


def split_pools(rows: list[dict], n_validation: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation): ``n_validation`` rows drawn with ``seed`` form the validation pool; both keep the
    input order (the training stages take their prompts from the front of the train pool)."""
    if n_validation >= len(rows):
        raise DataError(f"prompts.n_validation = {n_validation} leaves no training prompt ({len(rows)} rows)")
    val = set(random.Random(seed).sample(range(len(rows)), n_validation))
    return [r for i, r in enumerate(rows) if i not in val], [r for i, r in enumerate(rows) if i in val]
