"""DeepSpeed ZeRO-2/3 through ``experiments/train.py --deepspeed`` on one device (a GPU with NCCL, or the
CPU with gloo for a dry run), with the checks of ``tests/test_distributed.py``.

1. Builds the tests' tiny world with the ``tiny_world`` fixture of ``tests/conftest.py`` (imported, not
   copied: its real stage scripts world.py, pretrain.py, teacher_demos.py, discriminator.py).
2. Runs ``python -m torch.distributed.run --standalone --nproc_per_node N experiments/train.py --method
   uniapl --deepspeed --ds-config CFG --keep-checkpoint --set steps=2 zero_stage=S ...`` in it, the runs
   side by side (they are tiny; each has its own port):
     zero2, zero3          fp32 (the tests' config: ``stage3_param_persistence_threshold: 0``)
     zero3_repeat          zero3 again: the run-to-run noise floor for the resume comparison
     zero3_resume          steps=1 (ends with a DeepSpeed checkpoint), then steps=2 in the same --out
     zero2_bf16, zero3_bf16  ``dtype=bf16``: the bf16 path train.py supports (autocast, fp32 weights and
                           optimizer; DeepSpeed's own ``bf16.enabled`` is not a supported config of train.py)
3. Checks each run as the tests do: rank json (rank, world, stage, init digest = the base model's),
   weights changed, metrics.json (steps, method, keys, all finite), history.jsonl, model/ loads with the
   final digest, checkpoint files; resume: final digest = the straight zero3 run's.

Writes OUT/gpu_deepspeed.json (rewritten as it goes) and OUT/gpu_deepspeed_runs.log (every run's output);
prints PASS/FAIL per check. Exit status 0 only if every check passed.

    bash benchmarks/gpu_deepspeed.sh                      # on the GPU machine (OUT set by the tool)
    DS_DRY_RUN_CPU=1 bash benchmarks/gpu_deepspeed.sh     # CPU dry run (gloo)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
T0 = time.time()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_BUILD_OPS", "0")
sys.path.insert(0, str(REPO / "tests"))
if str(REPO / "src") not in sys.path:
    sys.path.append(str(REPO / "src"))

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import conftest  # noqa: E402  (tests/conftest.py: tiny_params, run, the tiny_world fixture)

DS_JSON = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}  # as tests/test_distributed.py
LOCK = threading.Lock()
PROCS: set = set()  # running torchruns (own process groups): killed if this script is stopped


def _stop(signum, frame):
    for p in list(PROCS):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
    print(f"gpu_deepspeed: stopped by signal {signum}", flush=True)
    os._exit(128 + signum)


signal.signal(signal.SIGTERM, _stop)
signal.signal(signal.SIGINT, _stop)


class Report:
    def __init__(self, out: Path):
        self.path = out / "gpu_deepspeed.json"
        self.data: dict = {"checks": {}, "runs": {}, "errors": {}}

    def flush(self):
        with LOCK:
            self.data["total_seconds"] = round(time.time() - T0, 1)
            self.data["all_passed"] = bool(self.data["checks"]) and all(
                c["ok"] for c in self.data["checks"].values())
            tmp = self.path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
            os.replace(tmp, self.path)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        with LOCK:
            self.data["checks"][name] = {"ok": bool(ok), "detail": detail}
        print(f"{'PASS' if ok else 'FAIL'}  {name}{'  -- ' + detail if detail else ''}", flush=True)
        self.flush()
        return bool(ok)


def fixture_body(fx):
    """The plain function under a pytest fixture (pytest >= 8.4 wraps it in a FixtureFunctionDefinition)."""
    for attr in ("_get_wrapped_function",):
        if hasattr(fx, attr):
            return getattr(fx, attr)()
    return getattr(fx, "__wrapped__", fx)


def build_world(pythonpath: str) -> Path:
    """conftest.tiny_world with the stage scripts' PYTHONPATH extended by the carried packages (conftest.run
    sets PYTHONPATH to src/ alone, which lacks pydantic and the rest on the GPU image)."""
    orig = conftest.run

    def run(args, cwd, env=None, check=True):
        return orig(args, cwd, {"PYTHONPATH": pythonpath, **(env or {})}, check)

    class Factory:  # the one method of pytest's tmp_path_factory the fixture uses
        @staticmethod
        def mktemp(name):
            return Path(tempfile.mkdtemp(prefix=f"uniapl_ds_{name}_"))

    conftest.run = run
    try:
        return fixture_body(conftest.tiny_world)(Factory())
    finally:
        conftest.run = orig


def train_module():
    spec = importlib.util.spec_from_file_location("train_script", REPO / "experiments/train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def torchrun(world: Path, out: Path, steps: int, stage: int, nproc: int, extra: list[str], env: dict,
             timeout: float, logs: Path) -> tuple[int, float, str]:
    cfg = out.parent / f"{out.name}.ds.json"
    cfg.write_text(json.dumps(DS_JSON))
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "experiments/train.py", "--method", "uniapl", "--deepspeed", "--ds-config", str(cfg),
            "--keep-checkpoint", "--set", f"steps={steps}", f"zero_stage={stage}", "threads=1", *extra,
            "--out", str(out)]
    t = time.time()
    p = subprocess.Popen(args, cwd=world, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    PROCS.add(p)
    try:
        log, _ = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        log, _ = p.communicate()
        rc = 124
        log += f"\n[gpu_deepspeed] TIMEOUT after {timeout}s: process group killed\n"
    finally:
        PROCS.discard(p)
    dt = time.time() - t
    with LOCK, open(logs, "a") as f:  # appended as each run ends: a timeout keeps what was done
        f.write(f"===== {out.name} steps={steps} zero_stage={stage} {' '.join(extra)} -> rc={rc} "
                f"in {dt:.1f}s\n$ {' '.join(args)}\n{log}\n")
    return rc, dt, log


def max_abs_diff(a: Path, b: Path, load_policy) -> float:
    sa, sb = load_policy(a).state_dict(), load_policy(b).state_dict()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=240, help="seconds per torchrun")
    ap.add_argument("--only", nargs="*", default=None, help="run names to run (default: all)")
    ap.add_argument("--world", default=None, help="reuse a tiny world built earlier (dry runs)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(out)
    logs = out / "gpu_deepspeed_runs.log"
    logs.write_text("")
    pythonpath = os.environ.get("PYTHONPATH", str(REPO / "src"))

    import transformers
    env_info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                "cuda_available": torch.cuda.is_available(), "transformers": transformers.__version__,
                "nproc_per_node": a.nproc, "backend": "nccl" if torch.cuda.is_available() else "gloo",
                "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR"), "pythonpath": pythonpath}
    if torch.cuda.is_available():
        env_info["device_name"] = torch.cuda.get_device_name(0)
        env_info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    rep.data["env"] = env_info
    t = time.time()
    try:
        import deepspeed
        from deepspeed.accelerator import get_accelerator
        env_info.update(deepspeed=deepspeed.__version__, deepspeed_file=deepspeed.__file__,
                        ds_accelerator=get_accelerator()._name)
        ok = rep.check("import_deepspeed", True, f"{deepspeed.__version__}, accelerator {get_accelerator()._name}, "
                       f"{time.time() - t:.1f}s")
    except Exception as e:  # noqa: BLE001
        rep.data["errors"]["import_deepspeed"] = traceback.format_exc()[-3000:]
        ok = rep.check("import_deepspeed", False, repr(e)[:300])
    if not ok:
        return 1
    print(json.dumps(env_info, indent=1), flush=True)

    t = time.time()
    try:
        world = Path(a.world) if a.world else build_world(pythonpath)
        print(f"tiny world: {world}", flush=True)
    except Exception as e:  # noqa: BLE001
        rep.data["errors"]["tiny_world"] = traceback.format_exc()[-6000:]
        rep.check("tiny_world", False, repr(e)[:600])
        return 1
    rep.data["timings"] = {"tiny_world": round(time.time() - t, 1)}
    rep.check("tiny_world", True, f"built by tests/conftest.py's fixture in {time.time() - t:.1f}s")

    from uniapl.models import load_policy
    digest = train_module().param_digest
    base = digest(load_policy(world / "models/student-s"))

    env = {**os.environ, "PYTHONPATH": pythonpath, "HF_HUB_OFFLINE": "1", "DS_BUILD_OPS": "0",
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    runs_dir = Path(tempfile.mkdtemp(prefix="uniapl_ds_runs_"))
    # name -> [(steps, stage, extra --set items)], a chain run in order in one --out
    plan = {"zero2": [(2, 2, [])], "zero3": [(2, 3, [])], "zero3_repeat": [(2, 3, [])],
            "zero3_resume": [(1, 3, []), (2, 3, [])],
            "zero2_bf16": [(2, 2, ["dtype=bf16"])], "zero3_bf16": [(2, 3, ["dtype=bf16"])]}
    if a.only:
        plan = {k: v for k, v in plan.items() if k in a.only}

    def do(name):
        o = runs_dir / name
        res = []
        for steps, stage, extra in plan[name]:
            rc, dt, log = torchrun(world, o, steps, stage, a.nproc, extra, env, a.timeout, logs)
            res.append({"steps": steps, "zero_stage": stage, "extra": extra, "rc": rc, "seconds": round(dt, 1)})
            if rc != 0:
                with LOCK:
                    rep.data["errors"][name] = log[-4000:]
                break
        with LOCK:
            rep.data["runs"][name] = res
        rep.flush()
        return name, res

    t = time.time()
    with ThreadPoolExecutor(len(plan)) as ex:
        results = dict(ex.map(do, list(plan)))
    rep.data["timings"]["runs_side_by_side"] = round(time.time() - t, 1)

    finals = {}
    for name, res in results.items():
        o = runs_dir / name
        desc = " then ".join(f"steps={r['steps']}: rc={r['rc']} in {r['seconds']}s" for r in res)
        if not rep.check(f"{name}/exit_0", all(r["rc"] == 0 for r in res) and len(res) == len(plan[name]), desc):
            continue
        stage = plan[name][-1][1]
        try:
            ranks = [json.loads((o / f"rank{k}.json").read_text()) for k in range(a.nproc)]
            r0 = ranks[0]
            finals[name] = r0["final"]
            rep.check(f"{name}/rank_json", [r["rank"] for r in ranks] == list(range(a.nproc))
                      and all(r["world"] == a.nproc and r["zero_stage"] == stage for r in ranks),
                      f"world {r0['world']}, zero_stage {r0['zero_stage']}")
            rep.check(f"{name}/init_digest_is_base_model", all(r["init"] == base for r in ranks))
            rep.check(f"{name}/ranks_agree", all(r["final"] == r0["final"] for r in ranks), f"{a.nproc} rank(s)")
            rep.check(f"{name}/weights_changed", r0["final"]["sha256"] != r0["init"]["sha256"],
                      f"param sum {r0['init']['sum']:.6f} -> {r0['final']['sum']:.6f}")
            m = json.loads((o / "metrics.json").read_text())
            fin = m["final"]
            bad = [k for k, v in fin.items() if isinstance(v, float) and not math.isfinite(v)]
            rep.check(f"{name}/metrics", m["steps"] == 2 and m["method"] == "uniapl"
                      and all(k in fin for k in ("loss/sft", "train/reward_mean", "train/grad_norm")) and not bad,
                      f"loss/sft {fin.get('loss/sft')}, grad_norm {fin.get('train/grad_norm')}, "
                      f"reward_mean {fin.get('train/reward_mean')}, non-finite {bad}")
            rep.data["runs"][name + "_final_metrics"] = fin
            n_hist = len((o / "history.jsonl").read_text().splitlines())
            rep.check(f"{name}/history_2_steps", n_hist == 2, f"{n_hist} lines")
            rep.check(f"{name}/model_dir_loads_with_final_digest", digest(load_policy(o / "model")) == r0["final"])
            ck = o / "checkpoint"
            need = [ck / "model.safetensors", ck / "ds" / "ckpt"] + [ck / f"trainer_state_rank{k}.pt"
                                                                   for k in range(a.nproc)]
            missing = [str(p.relative_to(o)) for p in need if not p.exists()]
            rep.check(f"{name}/checkpoint_files", not missing, f"missing {missing}" if missing else
                      f"ds/ckpt: {sorted(p.name for p in (ck / 'ds' / 'ckpt').iterdir())}")
        except Exception as e:  # noqa: BLE001
            rep.data["errors"][name + "/checks"] = traceback.format_exc()[-3000:]
            rep.check(f"{name}/checks_ran", False, repr(e)[:300])

    # resume = the uninterrupted run (the test's strict check); on a GPU the repeat shows the noise floor
    if "zero3" in finals and "zero3_resume" in finals:
        same = finals["zero3_resume"] == finals["zero3"]
        info = {"resume_equals_straight": same}
        if "zero3_repeat" in finals:
            info["repeat_equals_straight"] = finals["zero3_repeat"] == finals["zero3"]
            info["max_abs_diff_repeat_vs_straight"] = max_abs_diff(runs_dir / "zero3_repeat/model",
                                                                   runs_dir / "zero3/model", load_policy)
        info["max_abs_diff_resume_vs_straight"] = max_abs_diff(runs_dir / "zero3_resume/model",
                                                               runs_dir / "zero3/model", load_policy)
        rep.data["resume"] = info
        rep.check("zero3_resume/final_digest_equals_straight_run", same, json.dumps(info))
    if "zero3" in finals and "zero3_repeat" in finals:  # information: bitwise run-to-run determinism
        print(f"INFO  zero3_repeat: same final digest as zero3: {finals['zero3_repeat'] == finals['zero3']}")
    if "zero2" in finals and "zero3" in finals:  # information only: the tests do not compare the stages
        rep.data["zero2_vs_zero3"] = {"same_digest": finals["zero2"] == finals["zero3"],
                                      "max_abs_diff": max_abs_diff(runs_dir / "zero2/model", runs_dir / "zero3/model",
                                                                   load_policy)}
    rep.flush()
    n_fail = sum(not c["ok"] for c in rep.data["checks"].values())
    print(f"gpu_deepspeed: {len(rep.data['checks']) - n_fail} passed, {n_fail} failed, "
          f"{time.time() - T0:.0f}s; all_passed={rep.data['all_passed']}", flush=True)
    return 0 if n_fail == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
