"""`dvc repro` with a wall-clock time per stage: prints a table and writes it as JSON.

    python experiments/timed_repro.py [--out results/timing/repro.json] [--no-server] [dvc repro args...]

The stages run in a warm interpreter (``uniapl.stage_server``: torch, transformers, nltk and
lm-evaluation-harness imported once, then one fork per stage); ``--no-server`` runs each stage in a fresh
process, as plain ``dvc repro`` does. The outputs are the same either way (tests/test_stage_server.py).

The per-stage time is measured from DVC's "Running stage" line to the next one (so it includes the
interpreter start and DVC's own hashing/caching of the outputs); skipped stages are not listed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from uniapl.stage_server import serving

STAGE = re.compile(r"^Running stage '([^']+)'")


def cpu_facts() -> dict:
    """The x86 kernel selection the stages ran with: PyTorch's CPU capability and the ISA-pinning variables."""
    facts = {k: os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    try:  # in a child, so the capability reflects the environment the stages see
        facts["torch_cpu_capability"] = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
            capture_output=True, text=True, timeout=120).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        facts["torch_cpu_capability"] = None
    return facts


def timed_repro(args: list[str], out: str | Path | None, cwd: str | Path = ".", server: bool = True) -> dict:
    t0 = time.time()
    # This interpreter's environment runs DVC and the stages' `python` (the project venv, however launched).
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    with serving(env, server) as env:
        rc, times = _run(args, cwd, env)
    result = {"returncode": rc, "total_seconds": round(time.time() - t0, 1), "stages": times,
              "cpu_count": os.cpu_count(), "args": args, "stage_server": server, "cpu": cpu_facts()}
    return _report(result, out, cwd)


def _run(args: list[str], cwd, env: dict) -> tuple[int, dict[str, float]]:
    times: dict[str, float] = {}
    current, started = None, time.time()
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
    for line in proc.stdout:
        sys.stdout.write(line)
        m = STAGE.match(line)
        if m:
            now = time.time()
            if current:
                times[current] = round(now - started, 1)
            current, started = m.group(1), now
    rc = proc.wait()
    if current:
        times[current] = round(time.time() - started, 1)
    return rc, times


def _report(result: dict, out, cwd) -> dict:
    rc, times = result["returncode"], result["stages"]
    if out:
        p = Path(cwd) / out
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, p)
    groups: dict[str, float] = {}
    for k, v in times.items():
        groups[k.split("@")[0]] = groups.get(k.split("@")[0], 0.0) + v
    print(f"\n{'stage group':<20}{'n':>4}{'seconds':>10}")
    for g, v in groups.items():
        print(f"{g:<20}{sum(1 for k in times if k.split('@')[0] == g):>4}{v:>10.0f}")
    print(f"{'total':<24}{result['total_seconds']:>10.0f}  (dvc repro exit {rc})")
    return result


if __name__ == "__main__":
    argv = sys.argv[1:]
    out = "results/timing/repro.json"
    if argv[:1] == ["--out"]:
        if len(argv) < 2:
            sys.exit("error: --out expects a path")
        out, argv = argv[1], argv[2:]
    server = "--no-server" not in argv
    argv = [a for a in argv if a != "--no-server"]
    sys.exit(timed_repro(argv, out, server=server)["returncode"])
