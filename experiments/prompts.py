"""Stage `prompts`: the training prompt pools, from IFEval-format rows (`params.prompts`; uniapl.prompt_data).

Reads `prompts.source`, validates every row against the IFEval checkers (a bad row stops the stage with its
source and row number; nothing is written), removes prompts that overlap the evaluation sets of
`prompts.exclude`, and writes data/prompts/{train,validation}.jsonl and results/prompts.json.
"""

from __future__ import annotations

from uniapl.stage_server import delegate

if __name__ == "__main__":
    delegate()  # in `make repro`, a warm interpreter runs this stage (uniapl.stage_server); else a no-op

import argparse
import time
from collections import Counter
from pathlib import Path

from uniapl.config import load_params
from uniapl.errors import MissingPathError, run_stage
from uniapl.io import atomic_path, exit_fast, read_jsonl, write_json, write_jsonl
from uniapl.prompt_data import load_rows, remove_overlap, split_pools, validate_rows


def main(params_path: str, out: str, stats_path: str) -> None:
    t0 = time.time()
    cfg = load_params(params_path).prompts
    rows, label = load_rows(cfg.source, cfg.split, cfg.config)
    rows = validate_rows(rows, label)
    held = []
    for path in cfg.exclude:
        if not Path(path).is_file():
            raise MissingPathError(f"{path}: no such file (prompts.exclude)")
        held += [r["prompt"] for r in read_jsonl(path, keys=("prompt",))]
    kept, n_overlap = remove_overlap(rows, held)
    for i, r in enumerate(kept):  # teacher_demos and the trainer name rows by key
        r.setdefault("key", f"prompt-{i}")
    train, val = split_pools(kept, cfg.n_validation, cfg.seed)
    with atomic_path(out) as tmp:  # both pools or neither
        tmp.mkdir()
        for name, pool in (("train", train), ("validation", val)):
            write_jsonl(tmp / f"{name}.jsonl", pool)
    ids = Counter(i for r in train for i in r["instruction_id_list"])
    stats = {"source": label, "n_rows": len(rows), "n_overlap_removed": n_overlap, "n_train": len(train),
             "n_validation": len(val), "instructions_train": dict(sorted(ids.items())),
             "seconds": round(time.time() - t0, 1)}
    write_json(stats_path, stats)
    print({k: v for k, v in stats.items() if k != "instructions_train"})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="data/prompts")
    ap.add_argument("--stats", default="results/prompts.json")
    a = ap.parse_args()
    run_stage(main, a.params, a.out, a.stats)
    exit_fast()
