"""Run a stage's commands side by side, one per core: `python experiments/side_by_side.py CMD1 CMD2 ...`.

DVC runs one stage at a time; on this project's small models a training run is bound by per-op overhead, so
two runs with one thread each finish sooner than the same two runs one after the other with two threads
(`benchmarks/side_by_side.py` measures it). A stage of dvc.yaml therefore trains two runs at once, each an
ordinary `python experiments/train.py ...` command with its own outputs (each run's bits do not depend on
what runs beside it: every run sets its own thread count, `train.threads`).

Behaves like one command to DVC:
* the exit status is 0 only when every command succeeded; when one fails, the others are stopped (SIGTERM:
  their checkpoints stay, so `dvc repro` resumes them) and the first failure's status is returned;
* SIGINT and SIGTERM reach every command; each output line is prefixed with its command's number ([1], [2]...);
* at most ``--jobs`` commands run at a time (default: all of them).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass


def _relay(proc: subprocess.Popen, tag: str, lock: threading.Lock) -> None:
    for line in iter(proc.stdout.readline, b""):
        with lock:
            sys.stdout.buffer.write(tag.encode() + line)
            sys.stdout.buffer.flush()


def run_side_by_side(commands: list[str], jobs: int | None = None) -> int:
    """Run shell ``commands`` at most ``jobs`` at a time; 0 if all succeeded, else the first failure's status."""
    jobs = len(commands) if jobs is None else max(1, jobs)
    pending = list(enumerate(commands, 1))
    running: dict[int, tuple[subprocess.Popen, threading.Thread]] = {}
    lock, failed = threading.Lock(), []
    stopping = threading.Event()

    def on_signal(signum, _frame):
        stopping.set()
        for proc, _ in list(running.values()):
            _signal_group(proc, signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while pending or running:
            while pending and len(running) < jobs and not failed and not stopping.is_set():
                i, cmd = pending.pop(0)
                # its own process group: a signal reaches the shell and everything it started
                proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                t = threading.Thread(target=_relay, args=(proc, f"[{i}] ", lock), daemon=True)
                t.start()
                running[i] = (proc, t)
            if not running:
                break
            for i, (proc, t) in list(running.items()):
                try:
                    rc = proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    continue
                t.join()
                del running[i]
                if rc != 0 and not failed:
                    failed.append(rc)
                    with lock:
                        print(f"[{i}] failed (exit {rc}): {commands[i - 1]}", flush=True)
                    for other, _ in running.values():  # their checkpoints stay: a re-run resumes them
                        _signal_group(other, signal.SIGTERM)
        if stopping.is_set() and not failed:
            return 130
        return failed[0] if failed else 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=None, help="commands at a time (default: all)")
    ap.add_argument("commands", nargs="+", help="shell commands, each quoted as one argument")
    a = ap.parse_args(argv)
    print(f"side by side: {len(a.commands)} commands, {a.jobs or len(a.commands)} at a time", flush=True)
    return run_side_by_side(a.commands, a.jobs)


if __name__ == "__main__":
    sys.exit(main())
