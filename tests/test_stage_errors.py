"""A user's mistake is not a crash: the stage scripts, run as a user runs them, turn a bad params.yaml key or
value, a malformed or missing JSONL file, a missing model or data directory and a bad command-line value into
one `error: <message>` naming the place, exit status 2 and no traceback. Every case fails before a model
is loaded (a few seconds each: mostly the interpreter's start)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from conftest import ROOT, run

from uniapl.errors import DataError, MissingPathError, UserError, run_stage
from uniapl.io import read_jsonl

ROW = {"key": 1, "prompt": "Write a poem.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}],
       "response": "A poem", "pass": True}


def _user_error(r, *needles: str) -> str:
    """The one-message contract: exit 2, `error: ...` naming every needle, no traceback."""
    out = r.stdout + r.stderr
    assert r.returncode == 2, f"exit {r.returncode}:\n{out[-4000:]}"
    assert "Traceback" not in out, out[-4000:]
    assert r.stderr.startswith("error: ") or "\nerror: " in r.stderr, r.stderr[-2000:]
    for n in needles:
        assert n in r.stderr, f"{n!r} not in:\n{r.stderr[-2000:]}"
    return r.stderr


def _write_jsonl(path, rows, bad_line: str | None = None):
    """``rows`` as JSONL, then ``bad_line`` (line len(rows) + 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + (bad_line + "\n" if bad_line else ""))
    return path


@pytest.fixture
def params_file(tmp_path):
    """Write params.yaml (the repo's, with ``change`` merged in) into tmp_path; return its name."""
    def write(change: dict | None = None) -> str:
        p = yaml.safe_load((ROOT / "params.yaml").read_text())
        for section, keys in (change or {}).items():
            p.setdefault(section, {}).update(keys)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        return "params.yaml"
    return write


# Every stage script that loads params.yaml, with the arguments it needs.
PARAMS_SCRIPTS = [
    ["experiments/world.py"],
    ["experiments/prompts.py"],
    ["experiments/pretrain.py", "--model", "teacher"],
    ["experiments/teacher_demos.py"],
    ["experiments/evaluate.py", "--model", "models/teacher", "--name", "teacher"],
    ["experiments/discriminator.py"],
    ["experiments/train.py", "--method", "sft"],
    ["experiments/aggregate.py"],
]


@pytest.mark.parametrize("argv", PARAMS_SCRIPTS, ids=lambda a: a[0].split("/")[1])
def test_a_typo_in_params_yaml_is_one_message(tmp_path, params_file, argv):
    name = params_file({"train": {"gruop_size": 8}})
    r = run([str(ROOT / argv[0]), "--params", name, *argv[1:]], tmp_path, check=False)
    err = _user_error(r, "params.yaml", "train.gruop_size")
    assert "<root>" not in err, err


def test_a_bad_params_value_is_one_message(tmp_path, params_file):
    name = params_file({"grpo": {"group_size": "many"}})
    r = run([str(ROOT / "experiments/train.py"), "--params", name, "--method", "grpo"], tmp_path, check=False)
    _user_error(r, "params.yaml", "grpo.group_size")


@pytest.mark.parametrize("argv, needle", [
    (["--set", "lambda_adv"], "--set expects key=value"),
    (["--set", "lambda_adv=[unclosed"], "not valid YAML"),
], ids=["no-equals", "not-yaml"])
def test_a_bad_set_override_is_one_message(tmp_path, params_file, argv, needle):
    r = run([str(ROOT / "experiments/train.py"), "--params", params_file(), "--method", "uniapl", *argv], tmp_path,
            check=False)
    _user_error(r, needle)


# A malformed line 4 in the JSONL file each script reads first.
BAD_JSONL = [
    (["experiments/train.py", "--method", "sft", "--demos", "demos.jsonl"], "demos.jsonl"),
    (["experiments/discriminator.py", "--demos", "demos.jsonl"], "demos.jsonl"),
    (["experiments/teacher_demos.py", "--prompts", "prompts/train.jsonl"], "prompts/train.jsonl"),
    (["experiments/prompts.py"], "data/world/train.jsonl"),
    (["experiments/pretrain.py", "--model", "teacher", "--world", "world"], "world/corpus_expert.jsonl"),
]


@pytest.mark.parametrize("argv, data", BAD_JSONL, ids=lambda a: a[0].split("/")[1] if isinstance(a, list) else "")
def test_a_malformed_jsonl_line_names_file_and_line(tmp_path, params_file, argv, data):
    _write_jsonl(tmp_path / data, [ROW] * 3, '{"prompt": "x", "response": ')
    r = run([str(ROOT / argv[0]), "--params", params_file(), *argv[1:]], tmp_path, check=False)
    _user_error(r, f"{data}:4: not valid JSON")


def test_a_record_without_a_needed_key_names_file_line_and_key(tmp_path, params_file):
    _write_jsonl(tmp_path / "demos.jsonl", [ROW, {k: v for k, v in ROW.items() if k != "response"}])
    r = run([str(ROOT / "experiments/train.py"), "--params", params_file(), "--method", "sft",
             "--demos", "demos.jsonl"], tmp_path, check=False)
    _user_error(r, "demos.jsonl:2: missing key response")


def test_a_missing_data_file_is_named(tmp_path, params_file):
    r = run([str(ROOT / "experiments/train.py"), "--params", params_file(), "--method", "sft",
             "--demos", "nowhere/demos.jsonl"], tmp_path, check=False)
    _user_error(r, "nowhere/demos.jsonl: no such file")


# A model or data directory that is not there (the other inputs are fine).
MISSING_DIR = [
    (["experiments/train.py", "--method", "sft", "--models", "modles"], "modles/student-s"),
    (["experiments/train.py", "--method", "sft", "--evaluate"], "models/teacher: no such directory"),
    (["experiments/train.py", "--method", "uniapl"], "models/discriminator: no such directory"),
    (["experiments/evaluate.py", "--model", "models/teacher", "--name", "teacher"],
     "models/teacher: no such tokenizer directory (run `dvc repro pretrain@teacher` first"),
    (["experiments/pretrain.py", "--model", "teacher"], "data/world/tokenizer: no such tokenizer directory"),
    (["experiments/teacher_demos.py"], "models/teacher: no such tokenizer directory"),
    (["experiments/discriminator.py"], "models/teacher: no such tokenizer directory"),
    (["experiments/aggregate.py", "--results", "nowhere"], "nowhere/eval: no such directory"),
]


@pytest.mark.parametrize("argv, needle", MISSING_DIR, ids=[
    "train-models", "train-teacher", "train-discriminator", "evaluate", "pretrain", "teacher_demos", "discriminator",
    "aggregate"])
def test_a_missing_model_or_data_directory_is_named(tmp_path, params_file, argv, needle):
    _write_jsonl(tmp_path / "data/teacher_demos.jsonl", [ROW] * 3)
    _write_jsonl(tmp_path / "data/world/train.jsonl", [ROW] * 3)
    _write_jsonl(tmp_path / "data/world/validation.jsonl", [ROW] * 3)
    _write_jsonl(tmp_path / "data/prompts/train.jsonl", [ROW] * 3)
    _write_jsonl(tmp_path / "data/world/corpus_expert.jsonl", [ROW] * 3)
    r = run([str(ROOT / argv[0]), "--params", params_file(), *argv[1:]], tmp_path, check=False)
    err = _user_error(r, needle)
    assert "Repo id must be in the form" not in err, err
    if argv[0] == "experiments/train.py":
        assert not (tmp_path / "runs").exists(), "a run that could not start left a run directory"


def test_selection_arguments_fail_cleanly(tmp_path, params_file):
    """An unknown selection candidate, and --selected without the `choose` stage's file, are one message each and
    leave no run directory."""
    _write_jsonl(tmp_path / "data/teacher_demos.jsonl", [ROW] * 3)
    r = run([str(ROOT / "experiments/train.py"), "--params", params_file(), "--candidate", "grpo_lr9"], tmp_path,
            check=False)
    _user_error(r, "selection.grid has no candidate 'grpo_lr9'", "grpo_lr3e-4")
    r = run([str(ROOT / "experiments/train.py"), "--params", params_file(), "--method", "grpo", "--selected",
             "results/selection"], tmp_path, check=False)
    _user_error(r, "results/selection/grpo.json: no such file", "dvc repro choose")
    assert not (tmp_path / "runs").exists()


def test_a_bad_command_line_value_is_one_message(tmp_path, params_file):
    r = run([str(ROOT / "experiments/pretrain.py"), "--params", params_file(), "--model", "student-xl"], tmp_path,
            check=False)
    _user_error(r, "pretrain.models has no model 'student-xl'")
    r = run([str(ROOT / "experiments/analyze.py"), "--figure", "main_resluts"], tmp_path, check=False)
    _user_error(r, "unknown figure 'main_resluts'")


# --------------------------------------------------------------------------------- the pieces, in-process
def test_run_stage_reports_a_user_error_and_lets_bugs_through(capsys):
    def bad_input():
        raise DataError("demos.jsonl:4: not valid JSON")

    with pytest.raises(SystemExit) as e:
        run_stage(bad_input)
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: demos.jsonl:4: not valid JSON\n"
    assert run_stage(lambda x, y=0: x + y, 1, y=2) == 3

    def bug():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_stage(bug)


def test_read_jsonl_errors_are_user_errors_naming_the_place(tmp_path):
    p = _write_jsonl(tmp_path / "d.jsonl", [ROW, ROW])
    assert read_jsonl(p, keys=("prompt", "response")) == [ROW, ROW]
    for bad, needle in [("{oops", "d.jsonl:3: not valid JSON"), ("[1, 2]", "d.jsonl:3: not a JSON object (got list)")]:
        _write_jsonl(p, [ROW, ROW], bad)
        with pytest.raises(DataError, match=re.escape(needle)):
            read_jsonl(p)
    _write_jsonl(p, [ROW, {"prompt": "x"}])
    with pytest.raises(DataError, match="d.jsonl:2: missing keys response, pass"):
        read_jsonl(p, keys=("prompt", "response", "pass"))
    with pytest.raises(MissingPathError, match="nope.jsonl: no such file") as e:
        read_jsonl(tmp_path / "nope.jsonl")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, UserError)
    assert issubclass(DataError, ValueError)  # callers that caught ValueError still do


@pytest.mark.parametrize("path, needle", [
    ("models/teacher", "models/teacher: no such model directory (run `dvc repro pretrain@teacher` first, or check "
                       "--models)"),
    ("/no/such/dir", "/no/such/dir: no such model directory (check the path)"),
    ("./student", "./student: no such model directory"),
    ("a/b/c", "a/b/c: no such model directory"),
    ("runs/student-s/sft/seed0/model", "run the training stage that writes it first"),
    ("models/discriminator", "run `dvc repro discriminator` first"),
])
def test_a_local_model_path_that_is_not_there_is_named(tmp_path, monkeypatch, path, needle):
    from uniapl.models import load_policy

    monkeypatch.chdir(tmp_path)  # no models/ nor runs/ here: still local paths (the pipeline writes them)
    with pytest.raises(MissingPathError) as e:
        load_policy(path)
    assert needle in str(e.value)


def test_a_directory_without_the_files_is_not_a_model(tmp_path):
    from uniapl.models import load_policy, load_tokenizer

    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingPathError, match="not a model directory \\(no config.json"):
        load_policy(tmp_path / "empty")
    with pytest.raises(MissingPathError, match="not a tokenizer directory"):
        load_tokenizer(tmp_path / "empty")


def test_a_hub_id_that_cannot_be_found_is_a_user_error(tmp_path, monkeypatch):
    from uniapl.models import load_tokenizer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="no-such-org/no-such-model: no such tokenizer directory, and no such model "
                                        "on the Hugging Face Hub"):
        load_tokenizer("no-such-org/no-such-model")


def test_train_checks_its_evaluation_inputs_before_training(tmp_path, params_file):
    """`train.py --evaluate` with a test split missing fails before any training (no run directory)."""
    _write_jsonl(tmp_path / "data/teacher_demos.jsonl", [ROW] * 3)
    (tmp_path / "models/teacher").mkdir(parents=True)
    r = run([str(ROOT / "experiments/train.py"), "--params", params_file(), "--method", "sft", "--evaluate"],
            tmp_path, check=False)
    _user_error(r, "data/world/in_domain.jsonl: no such file")
    assert not (tmp_path / "runs").exists()
