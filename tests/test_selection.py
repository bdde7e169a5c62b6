"""Plateau criterion, candidate scores and the per-method choice (uniapl.selection), and the choose stage."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from uniapl import selection as S

ROOT = Path(__file__).resolve().parents[1]


def curve(vals, total=40):
    steps = [round(total * (i + 1) / len(vals)) for i in range(len(vals))]
    return {"steps": steps, "prompt_strict": vals, "budget": {"steps": total}}


def test_plateau_criterion():
    flat = S.plateau(curve([0.2, 0.4, 0.5, 0.5, 0.51, 0.5, 0.5, 0.505]), 0.01)
    assert flat["reached"] is True and flat["gain_last_quarter"] == pytest.approx(0.5025 - 0.505)
    rising = S.plateau(curve([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]), 0.01)
    assert rising["reached"] is False and rising["gain_last_quarter"] == pytest.approx(0.2)
    falling = S.plateau(curve([0.5, 0.6, 0.6, 0.6, 0.6, 0.55, 0.5, 0.45]), 0.01)
    assert falling["reached"] is True  # more steps would not raise it
    assert S.plateau(curve([0.5]), 0.01)["reached"] is None  # one evaluation: cannot be judged


def test_score_and_choose():
    grid = {"g1": {"method": "grpo", "lr": 1e-4}, "g2": {"method": "grpo", "lr": 3e-4},
            "u1": {"method": "uniapl", "w_sft": 0.1}, "u2": {"method": "uniapl", "w_sft": 1.0}}
    curves = {"g1": curve([0.1, 0.2, 0.3, 0.4]), "g2": curve([0.3, 0.5, 0.45, 0.41]),
              "u1": curve([0.3, 0.3, 0.3, 0.3]), "u2": curve([0.3, 0.3, 0.3, 0.3])}
    assert S.score(curves["g2"], "final") == 0.41 and S.score(curves["g2"], "last_quarter_mean") == 0.41
    assert S.score(curve([0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9]), "last_quarter_mean") == pytest.approx(0.85)
    out = S.choose(grid, curves, "final")
    assert out["grpo"]["chosen"] == {"lr": 3e-4} and out["grpo"]["candidate"] == "g2"
    assert out["uniapl"]["candidate"] == "u1"  # a tie keeps the first in grid order
    assert set(out["grpo"]["candidates"]) == {"g1", "g2"}
    with pytest.raises(KeyError, match="g3"):
        S.choose({**grid, "g3": {"method": "grpo"}}, curves, "final")


def test_choose_stage_writes_one_file_per_method(tmp_path):
    params = (ROOT / "params.yaml").read_text()
    import yaml
    p = yaml.safe_load(params)
    p["selection"] = {"student": "student-s", "seed": 100, "score": "final", "share": {"a_grpo": "grpo"},
                      "grid": {"a": {"method": "grpo", "lr": 1.0e-4}, "b": {"method": "grpo", "lr": 3.0e-4}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    sel = tmp_path / "select"
    sel.mkdir()
    for cid, v in (("a", 0.3), ("b", 0.4)):
        (sel / f"{cid}.json").write_text(json.dumps(curve([0.1, v])))
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "choose.py"), "--params", str(tmp_path / "params.yaml"),
                        "--select", str(sel), "--out", str(tmp_path / "selection")], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    g = json.loads((tmp_path / "selection" / "grpo.json").read_text())
    assert g["chosen"] == {"lr": 3e-4} and g["candidate"] == "b" and g["score"] == 0.4
    assert json.loads((tmp_path / "selection" / "sft.json").read_text())["chosen"] == {}
    shared = json.loads((tmp_path / "selection" / "a_grpo.json").read_text())
    assert shared["chosen"] == {"lr": 3e-4} and shared["shared_from"] == "grpo"
    (sel / "b.json").unlink()
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "choose.py"), "--params", str(tmp_path / "params.yaml"),
                        "--select", str(sel), "--out", str(tmp_path / "selection2")], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode != 0 and "select@b" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "selection2").exists()  # nothing half-written


def test_selection_grid_is_validated():
    from uniapl.config import ConfigError, load_params
    with pytest.raises(ConfigError, match="grid.x: needs method"):
        load_params(ROOT / "params.yaml", {"selection": {"grid": {"x": {"lr": 1e-4}}}})
    with pytest.raises(ConfigError, match=r"selection.grid.y.*lr"):
        load_params(ROOT / "params.yaml", {"selection": {"grid": {"y": {"method": "grpo", "lr": -1.0}}}})
