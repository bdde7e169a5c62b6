"""The quick profile: the whole pipeline (every stage of dvc.yaml) on tiny settings, in a temporary
copy of the repository, so the real repository's results and DVC cache are never touched.

    python experiments/quick.py [--dir .quick] [--profile profiles/quick.yaml]    # or: make quick

The copy holds the working tree's tracked and untracked-but-not-ignored files (so uncommitted edits
are exercised), with profiles/quick.yaml deep-merged over its params.yaml; then `dvc repro` runs there
with a per-stage timing (results/timing/repro.json inside the copy).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
from timed_repro import timed_repro  # noqa: E402

from uniapl.config import deep_merge, load_params  # noqa: E402
from uniapl.errors import MissingPathError, run_stage  # noqa: E402


def repo_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def pipeline_outputs(root: Path) -> list[str]:
    """Every output path declared in dvc.yaml (files or folders), relative to ``root``."""
    from dvc.repo import Repo
    with Repo(str(root)) as repo:
        return sorted({Path(o.fs_path).relative_to(root).as_posix() for o in repo.index.outs})


def make_copy(dest: Path, profile: Path) -> Path:
    """A fresh copy of the repo at ``dest`` with the profile merged into params.yaml (validated)."""
    if not profile.is_file():
        raise MissingPathError(f"{profile}: no such profile file (--profile)")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    # The copy starts with no pipeline outputs (nor dvc.lock): every stage runs there, and the default run's
    # committed results (metrics, responses, figures) must not leak into the quick profile's summary.
    outs = pipeline_outputs(ROOT)
    for f in repo_files(ROOT):
        if f == "dvc.lock" or any(f == o or f.startswith(o + "/") for o in outs):
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)
    params = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), yaml.safe_load(profile.read_text()))
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    load_params(dest / "params.yaml")  # a profile that breaks the schema fails here, naming the key
    # DVC wants an SCM, and DVCLive a commit to name as its baseline.
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "-c", "user.name=quick", "-c", "user.email=quick@localhost", "commit", "-q", "--no-verify",
                    "-m", "quick profile copy"], cwd=dest, check=True)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=str(ROOT / ".quick"))
    ap.add_argument("--profile", default=str(ROOT / "profiles" / "quick.yaml"))
    ap.add_argument("--no-server", action="store_true", help="a fresh interpreter per stage (no uniapl.stage_server)")
    a = ap.parse_args()
    t0 = time.time()
    d = make_copy(Path(a.dir), Path(a.profile))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    r = timed_repro([], "results/timing/repro.json", cwd=d, server=not a.no_server)
    print(f"quick profile in {d}: {time.time() - t0:.0f} s, dvc repro exit {r['returncode']}")
    return r["returncode"]


if __name__ == "__main__":
    sys.exit(run_stage(main))
