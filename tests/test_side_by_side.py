"""experiments/side_by_side.py: two runs in one stage behave as one command to DVC, and a run's bits do not
depend on what runs beside it."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run

sys.path.insert(0, str(ROOT / "experiments"))
from side_by_side import run_side_by_side  # noqa: E402

PY = sys.executable


def test_all_succeed_output_is_prefixed(capfd):
    rc = run_side_by_side([f"{PY} -c \"print('a')\"", f"{PY} -c \"print('b')\""])
    out = capfd.readouterr().out
    assert rc == 0 and "[1] a" in out and "[2] b" in out


def test_a_failure_fails_the_stage_and_stops_the_other(tmp_path):
    t0 = time.time()
    rc = run_side_by_side([f"{PY} -c 'import time; time.sleep(60)'", f"{PY} -c 'import sys; sys.exit(3)'"])
    assert rc == 3
    assert time.time() - t0 < 30  # the sleeper was stopped, not waited for


def test_jobs_bounds_how_many_run_at_once(tmp_path):
    log = tmp_path / "log"
    cmd = (f"{PY} -c \"import time, os; f = open('{log}', 'a'); f.write('s%d\\n' % time.time_ns()); f.flush(); "
           f"time.sleep(0.5); f.write('e%d\\n' % time.time_ns())\"")
    assert run_side_by_side([cmd, cmd, cmd], jobs=1) == 0
    events = [(int(x[1:]), x[0]) for x in log.read_text().split()]
    running, peak = 0, 0
    for _, kind in sorted(events):
        running += 1 if kind == "s" else -1
        peak = max(peak, running)
    assert peak == 1


def test_sigterm_reaches_every_command(tmp_path):
    marks = [tmp_path / "m1", tmp_path / "m2"]
    cmds = [f"{PY} -c \"import signal, sys, time, pathlib; "
            f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path('{m}').write_text('x'), sys.exit(0))); "
            f"time.sleep(60)\"" for m in marks]
    p = subprocess.Popen([PY, str(ROOT / "experiments/side_by_side.py"), *cmds])
    time.sleep(2)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) != 0  # interrupted: DVC must not record the stage
    assert all(m.exists() for m in marks)


@pytest.mark.slow
def test_a_run_beside_another_has_the_bits_of_a_run_alone(tiny_world, tmp_path):
    """Training seed 0 next to seed 1 gives seed 0's run alone, bit for bit (model and final metrics)."""
    d = tmp_path / "w"
    shutil.copytree(tiny_world, d, ignore=shutil.ignore_patterns("runs", "results"))
    (d / "experiments" / "side_by_side.py").write_text((ROOT / "experiments/side_by_side.py").read_text())
    (d / "experiments" / "train.py").write_text((ROOT / "experiments/train.py").read_text())

    def cmd(seed, out):
        return f"{PY} experiments/train.py --method uniapl --seed {seed} --out {out}"

    run(["experiments/train.py", "--method", "uniapl", "--seed", "0", "--out", "alone"], d)
    run(["experiments/side_by_side.py", cmd(0, "pair0"), cmd(1, "pair1")], d,
        env={"PYTHONPATH": str(ROOT / "src")})
    for f in ("model/model.safetensors",):
        assert (d / "alone" / f).read_bytes() == (d / "pair0" / f).read_bytes()
    final = [json.loads((d / o / "metrics.json").read_text())["final"] for o in ("alone", "pair0")]
    drop = {k for k in final[0] if k.startswith("perf/")}
    assert {k: v for k, v in final[0].items() if k not in drop} == {k: v for k, v in final[1].items() if k not in drop}
    assert (d / "pair1" / "model" / "model.safetensors").read_bytes() != (d / "alone" / "model" / "model.safetensors").read_bytes()
