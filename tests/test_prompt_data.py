"""The `prompts` stage (uniapl.prompt_data): IFEval-format rows from a file or a `datasets` directory,
validated against the IFEval checkers, minus the evaluation prompts, into train / validation pools."""

import json

import pytest
import yaml

from conftest import run
from uniapl.errors import DataError
from uniapl.prompt_data import load_rows, remove_overlap, split_pools, validate_rows

GOOD = [
    {"prompt": "Write about cats. Answer with at least 40 words.", "instruction_id_list": ["length_constraints:number_words"],
     "kwargs": [{"relation": "at least", "num_words": 40}]},
    {"prompt": "Write about dogs in lowercase, no commas.", "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"],
     "kwargs": [{}, {}]},
    {"prompt": "Mention the word garden.", "instruction_id_list": ["keywords:existence"], "kwargs": [{"keywords": ["garden"]}]},
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_good_rows_pass_and_kwargs_may_be_json_strings():
    rows = GOOD + [{**GOOD[0], "kwargs": json.dumps(GOOD[0]["kwargs"])}]
    out = validate_rows(rows, "x.jsonl")
    assert len(out) == 4 and out[3]["kwargs"] == GOOD[0]["kwargs"]


@pytest.mark.parametrize("bad,message", [
    ({"instruction_id_list": ["nope:unknown"], "kwargs": [{}]}, "unknown instruction id 'nope:unknown'"),
    ({"kwargs": [{"relation": "at least", "num_words": 40, "colour": "red"}]}, "unknown argument(s) ['colour']"),
    ({"kwargs": [{"relation": "at least"}]}, "missing argument(s) ['num_words']: the checker would draw them at random"),
    ({"kwargs": [{"relation": "about", "num_words": 40}]}, "rejected by the checker"),
    ({"kwargs": [{}, {}]}, "'kwargs' has 2 entries but 'instruction_id_list' has 1"),
    ({"prompt": ""}, "'prompt' must be a non-empty string"),
])
def test_a_bad_row_is_named_by_source_and_row(bad, message):
    rows = [GOOD[1], GOOD[2], {**GOOD[0], **bad}]
    with pytest.raises(DataError) as e:
        validate_rows(rows, "data/mine.jsonl")
    assert str(e.value).startswith("data/mine.jsonl: row 3: ") and message in str(e.value)


def test_overlap_is_removed_after_normalisation_and_pools_split_deterministically():
    kept, n = remove_overlap(GOOD, ["  write about CATS.   answer with at least 40 words. "])
    assert n == 1 and [r["prompt"] for r in kept] == [GOOD[1]["prompt"], GOOD[2]["prompt"]]
    tr, va = split_pools(GOOD, 1, seed=3)
    assert (tr, va) == split_pools(GOOD, 1, seed=3) and len(tr) == 2 and len(va) == 1
    assert [r for r in GOOD if r in tr] == tr  # input order kept
    with pytest.raises(DataError, match="leaves no training prompt"):
        split_pools(GOOD, 3, seed=0)


def test_parquet_and_a_datasets_directory_load(tmp_path):
    import datasets
    ds = datasets.Dataset.from_list([{**r, "kwargs": json.dumps(r["kwargs"])} for r in GOOD])
    ds.to_parquet(str(tmp_path / "p.parquet"))
    rows, label = load_rows(str(tmp_path / "p.parquet"))
    assert label.endswith("p.parquet") and len(validate_rows(rows, label)) == 3
    (tmp_path / "hub").mkdir()
    _write_jsonl(tmp_path / "hub" / "train.jsonl", GOOD)
    rows, label = load_rows(str(tmp_path / "hub"), split="train")
    assert label.endswith("hub[train]") and [r["prompt"] for r in rows] == [r["prompt"] for r in GOOD]
    with pytest.raises(DataError, match="cannot load the dataset"):
        load_rows(str(tmp_path / "nothing-here"))


def _stage_dir(tmp_path, tiny_world, source_rows, **prompts):
    d = tmp_path / "w"
    (d / "data/world").mkdir(parents=True)
    for split in ("in_domain", "ood", "validation"):
        (d / f"data/world/{split}.jsonl").write_text((tiny_world / f"data/world/{split}.jsonl").read_text())
    _write_jsonl(d / "mine.jsonl", source_rows)
    p = yaml.safe_load((tiny_world / "params.yaml").read_text())
    p["prompts"] = {"source": "mine.jsonl", **prompts}
    (d / "params.yaml").write_text(yaml.safe_dump(p))
    import shutil
    shutil.copytree(tiny_world / "experiments", d / "experiments")
    return d


def test_stage_writes_pools_and_drops_evaluation_prompts(tiny_world, tmp_path):
    held_out = json.loads((tiny_world / "data/world/ood.jsonl").read_text().splitlines()[0])
    rows = GOOD + [{k: held_out[k] for k in ("prompt", "instruction_id_list", "kwargs")}]
    d = _stage_dir(tmp_path, tiny_world, rows, n_validation=1, seed=0)
    run(["experiments/prompts.py"], d)
    train = [json.loads(x) for x in (d / "data/prompts/train.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (d / "data/prompts/validation.jsonl").read_text().splitlines()]
    stats = json.loads((d / "results/prompts.json").read_text())
    assert (stats["n_rows"], stats["n_overlap_removed"], stats["n_train"], stats["n_validation"]) == (4, 1, 2, 1)
    assert held_out["prompt"] not in {r["prompt"] for r in train + val}
    assert all(r["key"].startswith("prompt-") for r in train + val)


def test_stage_with_a_bad_row_fails_cleanly_and_writes_nothing(tiny_world, tmp_path):
    d = _stage_dir(tmp_path, tiny_world, GOOD + [{**GOOD[0], "instruction_id_list": ["nope:x"]}])
    r = run(["experiments/prompts.py"], d, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error: mine.jsonl: row 4: unknown instruction id 'nope:x'" in r.stderr
    assert not (d / "data/prompts").exists() and not (d / "results/prompts.json").exists()
