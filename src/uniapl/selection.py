"""Validation curves -> the plateau criterion of a run and the settings chosen per method (pure functions).

A run's curve is its ``validation.json`` (``experiments/train.py``): greedy prompt-level strict accuracy on the
world's validation split at ``steps`` (and the ``rollouts`` seen by then). Nothing here reads a test split.
"""

from __future__ import annotations

import math


def candidate(params, cid: str) -> tuple[str, str, int, dict]:
    """(method, student, seed, settings) of selection candidate ``cid`` (params ``selection.grid.<cid>``)."""
    from uniapl.errors import UserError
    grid = params.selection.grid
    if cid not in grid:
        raise UserError(f"params: selection.grid has no candidate '{cid}' (known: {sorted(grid)})")
    settings = dict(grid[cid])
    return settings.pop("method"), params.selection.student, params.selection.seed, settings


def _quarters(curve: dict) -> tuple[list[float], list[float]]:
    """Validation values in the last quarter of the run's steps, and in the quarter before."""
    total = curve["budget"]["steps"]
    pts = list(zip(curve["steps"], curve["prompt_strict"]))
    last = [v for s, v in pts if s > 0.75 * total]
    prev = [v for s, v in pts if 0.5 * total < s <= 0.75 * total]
    return last, prev


def plateau(curve: dict, tol: float) -> dict:
    """Has the run plateaued? ``reached`` when mean(last quarter) - mean(third quarter) < ``tol``.

    A curve that is still falling counts as plateaued (more steps would not raise it); one with no evaluation
    in either quarter cannot be judged (``reached`` None)."""
    last, prev = _quarters(curve)
    if not last or not prev:
        return {"reached": None, "criterion": f"last-quarter mean - third-quarter mean < {tol:g}",
                "gain_last_quarter": None, "n_evals": len(curve["steps"])}
    gain = sum(last) / len(last) - sum(prev) / len(prev)
    return {"reached": bool(gain < tol), "criterion": f"last-quarter mean - third-quarter mean < {tol:g}",
            "gain_last_quarter": gain, "last_quarter_mean": sum(last) / len(last),
            "best": max(curve["prompt_strict"]), "final": curve["prompt_strict"][-1], "n_evals": len(curve["steps"])}


def score(curve: dict, how: str) -> float:
    """A candidate's validation score: ``final`` value, or ``last_quarter_mean`` (the final value if the last
    quarter has no other evaluation)."""
    vals = curve["prompt_strict"]
    if not vals:
        return math.nan
    if how == "final":
        return vals[-1]
    last, _ = _quarters(curve)
    return sum(last) / len(last) if last else vals[-1]


def choose(grid: dict[str, dict], curves: dict[str, dict], how: str) -> dict[str, dict]:
    """Per method with candidates: the best-scoring candidate's settings (ties: the first in ``grid`` order).

    Returns ``{method: {"chosen": {key: value}, "candidate": id, "score": float, "candidates": {id: {...}}}}``."""
    out: dict[str, dict] = {}
    for cid, cand in grid.items():
        if cid not in curves:
            raise KeyError(f"selection candidate '{cid}' has no validation curve")
        m = cand["method"]
        sc = score(curves[cid], how)
        entry = out.setdefault(m, {"chosen": None, "candidate": None, "score": -math.inf, "candidates": {}})
        entry["candidates"][cid] = {"settings": {k: v for k, v in cand.items() if k != "method"}, "score": sc,
                                    "curve": {"steps": curves[cid]["steps"], "prompt_strict": curves[cid]["prompt_strict"]}}
        if sc > entry["score"]:
            entry.update(chosen={k: v for k, v in cand.items() if k != "method"}, candidate=cid, score=sc)
    return out
