"""Stage `choose`: the selection candidates' validation curves -> the settings each method's main runs use.

Reads `results/select/<candidate>.json` (stages `select@<candidate>`) for every candidate in params
`selection.grid`, scores each on the validation split (`selection.score`), and writes
`results/selection/<method>.json` for every method: `chosen` (the best candidate's settings; those of the
method named in `selection.share` for a method that shares; `{}` for any other method without candidates,
which keeps its params.yaml settings), the candidate, its score, and every
candidate's score and curve. Main runs read their method's file (`train.py --selected results/selection`).
"""

from __future__ import annotations

from uniapl.stage_server import delegate

if __name__ == "__main__":
    delegate()  # in `make repro`, a warm interpreter runs this stage (uniapl.stage_server); else a no-op

import argparse
import json
from pathlib import Path

from uniapl.config import load_params
from uniapl.errors import MissingPathError, run_stage
from uniapl.io import atomic_path, exit_fast, write_json
from uniapl.methods import METHODS
from uniapl.selection import choose


def main(params_path: str, select_dir: str, out: str) -> None:
    sel = load_params(params_path).selection
    curves = {}
    for cid in sel.grid:
        p = Path(select_dir) / f"{cid}.json"
        if not p.is_file():
            raise MissingPathError(f"{p}: no such file (run `dvc repro select@{cid}` first)")
        curves[cid] = json.loads(p.read_text())
    chosen = choose(sel.grid, curves, sel.score)
    with atomic_path(out) as tmp:
        for m in METHODS:
            entry = chosen.get(m, {"chosen": {}, "candidate": None, "score": None, "candidates": {}})
            if m in sel.share and sel.share[m] in chosen:  # a family member: the other method's choice
                src = chosen[sel.share[m]]
                entry = {"chosen": src["chosen"], "candidate": src["candidate"], "score": src["score"],
                         "shared_from": sel.share[m], "candidates": {}}
            write_json(tmp / f"{m}.json", {"method": m, "student": sel.student, "seed": sel.seed,
                                           "score_kind": sel.score, **entry})
    for m, e in chosen.items():
        print(f"{m}: {e['candidate']} (validation {e['score']:.3f}) -> {e['chosen']}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--select", default="results/select")
    ap.add_argument("--out", default="results/selection")
    a = ap.parse_args()
    run_stage(main, a.params, a.select, a.out)
    exit_fast()
