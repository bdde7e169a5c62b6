"""A warm interpreter for the pipeline's stage scripts: every stage pays the imports of torch, transformers,
nltk and lm-evaluation-harness (about 6 s on a 2-core host, x 67 stages) once per ``dvc repro`` instead of
once per stage.

How it works: ``experiments/timed_repro.py`` (``make repro``, ``make quick``) starts a server process that
imports those third-party libraries and then waits on a UNIX socket (``UNIAPL_STAGE_SERVER``, in a private
temporary directory). Every stage script calls :func:`delegate` first, before any heavy import: when the
variable is set and the server answers, the script sends its argv, working directory, environment and its
stdin/stdout/stderr file descriptors; the server forks, the child takes those descriptors, directory,
environment and argv and runs the script as ``__main__``; the client exits with the child's status. DVC sees
an ordinary command with its ordinary output and exit code.

What keeps a delegated stage identical to a fresh ``python experiments/<stage>.py``:

* the server imports third-party code only, never ``uniapl`` or the scripts: a child imports the project's
  code from disk as a fresh process does, so editing ``src/`` during a ``dvc repro`` cannot run stale code;
* the server runs no tensor op before forking (no thread pool exists yet; a child sets its own threads);
* the client must be the server's interpreter (the same binary, venv and flags), and its environment must equal
  the one the server started with, apart from DVC's per-stage
  variables (``DVC_*``) and the shell's bookkeeping (``PWD``, ``OLDPWD``, ``SHLVL``, ``_``, the prompts ``PS1``/``PS2``): libraries read
  variables at import time (``HF_HUB_OFFLINE``, ``OMP_NUM_THREADS``...), so any other difference runs the
  stage in its own process; the variables the server's imports set (torch's ``KMP_*``...) are set in the
  child too, as a fresh process's own imports would;
* a client that cannot reach the server or get its stage accepted, or runs under ``torchrun``
  (``LOCAL_RANK`` set), runs in its own process; a server that cannot start leaves every stage in its own
  process (:func:`serving`);
* a client that dies takes its child with it (SIGKILL when the connection drops); SIGINT and SIGTERM sent
  to the client are passed on to the child, which runs its atexit handlers on every exit path and dies of
  SIGINT as a fresh interpreter would;
* the server runs in its own session (a terminal's Ctrl-C reaches a stage once, through its client), kills
  its stages on SIGTERM, and exits when the process that started it dies (EOF on a pipe); one client's
  failure never ends it.

``tests/test_stage_server.py`` checks that a stage's outputs are byte-identical either way.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import time
from contextlib import contextmanager

ENV_VAR = "UNIAPL_STAGE_SERVER"
PRELOAD = ("numpy", "yaml", "pydantic", "tqdm", "torch", "tokenizers", "transformers", "datasets", "nltk",
           "langdetect", "dvclive", "lm_eval.tasks", "matplotlib")
"""Third-party modules the server imports (never ``uniapl``; see the module docstring). Not
``lm_eval.tasks.ifeval``: it fetches NLTK data at import unless ``uniapl._punkt`` has run first."""
PRELOAD_ATTRS = {"transformers": ("AutoModelForCausalLM", "AutoTokenizer", "PreTrainedTokenizerFast", "Qwen3Config",
                                  "Qwen3ForCausalLM", "Qwen3ForSequenceClassification")}
"""transformers loads its model classes lazily: touching them imports their modules."""
_VOLATILE_ENV = ("PWD", "OLDPWD", "SHLVL", "_", "PS1", "PS2")
ACCEPT_TIMEOUT = 60.0
"""Seconds a client waits for the server to accept its stage before it runs the stage itself."""
_IN_CHILD = False
_LISTENER: socket.socket | None = None
_CHILDREN: set[int] = set()


def _volatile(key: str) -> bool:
    return key.startswith("DVC_") or key in _VOLATILE_ENV or key == ENV_VAR


def env_difference(a: dict, b: dict) -> list[str]:
    """Keys whose values differ between two environments, ignoring DVC's and the shell's per-run ones."""
    keys = {k for k in set(a) | set(b) if not _volatile(k)}
    return sorted(k for k in keys if a.get(k) != b.get(k))


def _send_msg(sock: socket.socket, obj: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    header = struct.pack("!I", len(data))
    if fds:
        socket.send_fds(sock, [header + data], fds)
    else:
        sock.sendall(header + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def _recv_msg(sock: socket.socket, with_fds: int = 0) -> tuple[dict, list[int]]:
    fds: list[int] = []
    if with_fds:
        msg, fds, _, _ = socket.recv_fds(sock, 4, with_fds)
        if len(msg) < 4:
            raise ConnectionError("connection closed")
        (n,) = struct.unpack("!I", msg[:4])
        data = msg[4:] + _recv_exact(sock, n - (len(msg) - 4))
    else:
        (n,) = struct.unpack("!I", _recv_exact(sock, 4))
        data = _recv_exact(sock, n)
    return json.loads(data), list(fds)


# ----------------------------------------------------------------------------------------------- client
def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def delegate() -> None:
    """Run this script in the warm server when one is reachable, then exit with its status; otherwise
    return (the script runs in this process). Call first in a stage script's ``__main__`` block."""
    path = os.environ.get(ENV_VAR)
    if _IN_CHILD or not path or "LOCAL_RANK" in os.environ:
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        print(f"stage server at {path} not reachable ({e.strerror or e}); running in this process", file=sys.stderr)
        return
    script = os.path.abspath(sys.argv[0])
    stdio = [fd if _is_open(fd) else os.open(os.devnull, os.O_RDWR) for fd in (0, 1, 2)]  # CI: no stdin
    try:  # until the server has accepted, nothing has started: any failure runs the stage here
        sock.settimeout(ACCEPT_TIMEOUT)
        _send_msg(sock, {"argv": [script, *sys.argv[1:]], "cwd": os.getcwd(), "env": dict(os.environ),
                         "python": [os.path.realpath(sys.executable), sys.prefix], "flags": list(sys.flags)}, stdio)
        reply, _ = _recv_msg(sock)
        sock.settimeout(None)
    except (OSError, ValueError) as e:  # socket.timeout and ConnectionError are OSErrors
        print(f"stage server did not accept the stage ({e}); running in this process", file=sys.stderr)
        sock.close()
        return
    if not reply.get("accepted"):
        print(f"stage server: {reply.get('reason')}; running in this process", file=sys.stderr)
        sock.close()
        return

    def forward(signum, _frame):  # Ctrl-C / a kill of the stage reaches the child
        try:
            _send_msg(sock, {"signal": signum})
        except OSError:
            pass
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, forward)
    while True:
        try:
            result, _ = _recv_msg(sock)
            break
        except InterruptedError:
            continue
        except ConnectionError:
            print("stage server: connection lost before the stage finished", file=sys.stderr)
            os._exit(1)
    code = result["returncode"]
    if code < 0:  # the child died of a signal: so does this process, as a shell would report it
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


# ----------------------------------------------------------------------------------------------- server
def _run_child(request: dict, fds: list[int]) -> None:
    """In the forked child: become the stage process and run its script; never returns."""
    global _IN_CHILD
    _IN_CHILD = True
    code = 1
    try:
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ.pop(ENV_VAR, None)  # a script this stage starts runs in its own process
        argv = request["argv"]
        sys.argv = list(argv)
        sys.path[0] = os.path.dirname(argv[0])
        import runpy
        runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except KeyboardInterrupt:  # as a fresh interpreter: the traceback, then death by SIGINT
        import traceback
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:  # noqa: BLE001 - a stage's traceback goes to its own stderr
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        try:
            import atexit
            atexit._run_exitfuncs()  # as interpreter shutdown would (logging, DVCLive, temp dirs)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            if code < 0:
                signal.signal(-code, signal.SIG_DFL)
                os.kill(os.getpid(), -code)
            os._exit(code)


def _start_one(conn: socket.socket, server_env: dict, changes: dict) -> None:
    """Handle one stage: fork (in the server's main thread), then relay signals and report the exit status
    from a thread. ``server_env``: the server's environment before its imports; ``changes``: what the imports
    set (a value) or removed (None)."""
    import threading
    try:
        request, fds = _recv_msg(conn, with_fds=3)
    except (ConnectionError, OSError, ValueError):
        conn.close()
        return
    diff = env_difference(server_env, request["env"])
    same_python = (request.get("python") == [os.path.realpath(sys.executable), sys.prefix]  # binary and venv
                   and request.get("flags") == list(sys.flags))
    if len(fds) != 3 or diff or not same_python:
        reason = (f"environment differs from the server's ({', '.join(diff[:5])})" if diff else
                  f"another interpreter or flags ({request.get('python')})" if not same_python else "no stdio received")
        try:
            _send_msg(conn, {"accepted": False, "reason": reason})
        except OSError:
            pass
        for fd in fds:
            os.close(fd)
        conn.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        conn.close()
        if _LISTENER is not None:
            _LISTENER.close()
        env = {k: v for k, v in {**request["env"], **changes}.items() if v is not None}
        _run_child({**request, "env": env}, fds)
    _CHILDREN.add(pid)
    for fd in fds:
        os.close(fd)
    try:
        _send_msg(conn, {"accepted": True, "pid": pid})
    except OSError:  # the client is gone: nobody waits for this stage
        os.kill(pid, signal.SIGKILL)
    threading.Thread(target=_watch, args=(conn, pid), daemon=True).start()


def _watch(conn: socket.socket, pid: int) -> None:
    """Relay the client's signals to the child (EOF: the client died, SIGKILL the child); report its status."""
    import threading
    done = threading.Event()

    def relay():
        while not done.is_set():
            try:
                msg, _ = _recv_msg(conn)
            except (ConnectionError, OSError, ValueError):
                if not done.is_set():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                return
            if "signal" in msg:
                try:
                    os.kill(pid, int(msg["signal"]))
                except ProcessLookupError:
                    pass
    threading.Thread(target=relay, daemon=True).start()
    _, status = os.waitpid(pid, 0)
    _CHILDREN.discard(pid)
    done.set()
    try:
        _send_msg(conn, {"returncode": os.waitstatus_to_exitcode(status)})
    except OSError:
        pass
    conn.close()


def serve(path: str, ready_fd: int | None = None, preload: tuple[str, ...] = PRELOAD,
          parent_fd: int | None = None) -> None:
    """Import ``preload``, listen on ``path``, fork a child per stage until SIGTERM or until ``parent_fd`` (the
    read end of a pipe the parent holds open) reaches EOF: the parent died."""
    import importlib
    t0 = time.time()
    server_env = dict(os.environ)  # what a client's environment must equal (before any import touched it)
    for name in preload:
        mod = importlib.import_module(name)
        for attr in PRELOAD_ATTRS.get(name, ()):
            getattr(mod, attr)
    # Variables the imports set or removed (torch sets KMP_*, huggingface_hub HF_XET_*...): a fresh process
    # gets them from its own imports, so a child gets them too.
    changes = {k: os.environ.get(k) for k in set(server_env) | set(os.environ) if server_env.get(k) != os.environ.get(k)}
    global _LISTENER
    sock = _LISTENER = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(path):
        os.unlink(path)
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(4)

    def stop(*_):  # SIGTERM, or the parent is gone: no stage outlives the server
        for pid in list(_CHILDREN):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if os.path.exists(path):
            os.unlink(path)
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches a stage through its client only
    if parent_fd is not None:
        import threading

        def watch_parent():
            try:
                while os.read(parent_fd, 1):
                    pass
            except OSError:
                pass
            stop()
        threading.Thread(target=watch_parent, daemon=True).start()
    if ready_fd is not None:
        os.write(ready_fd, f"{time.time() - t0:.1f}\n".encode())
        os.close(ready_fd)
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        try:
            _start_one(conn, server_env, changes)
        except Exception as e:  # noqa: BLE001 - one client's trouble must not end the server
            print(f"stage server: a request failed ({type(e).__name__}: {e})", file=sys.stderr)
            conn.close()


class StageServer:
    """``with StageServer(env) as env2:`` a running server started with environment ``env`` (default
    ``os.environ``); ``env2`` is ``env`` plus ``UNIAPL_STAGE_SERVER``: run ``dvc repro`` (or a stage) with it.
    ``seconds``: how long the server's imports took. The server is stopped on exit."""

    def __init__(self, env: dict | None = None, python: str = sys.executable, preload: tuple[str, ...] = PRELOAD):
        self.python, self.preload = python, tuple(preload)
        self.base_env = dict(os.environ if env is None else env)
        self.proc = None
        self.dir = None

    def __enter__(self) -> dict:
        import subprocess
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="uniapl-stage-")  # 0700: only this user reaches the socket
        path = os.path.join(self.dir, "server.sock")
        env = {k: v for k, v in self.base_env.items() if k != ENV_VAR}
        r, w = os.pipe()
        self.parent_r, self.parent_w = os.pipe()  # the server exits when this process's end closes
        # imported as uniapl.stage_server (not run as __main__): a child's `delegate()` sees _IN_CHILD
        code = (f"from uniapl.stage_server import serve; serve({path!r}, {w}, {self.preload!r}, "
                f"parent_fd={self.parent_r})")
        self.proc = subprocess.Popen([self.python, "-c", code], env=env, pass_fds=(w, self.parent_r),
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        os.close(w)
        os.close(self.parent_r)
        self.seconds = None
        with os.fdopen(r) as f:
            line = f.readline().strip()  # written once the imports are done and the socket listens
        if not line:
            self.proc.wait(timeout=10)
            self.__exit__()
            raise RuntimeError(f"the stage server exited ({self.proc.returncode}) before listening")
        self.seconds = float(line)
        return {**env, ENV_VAR: path}

    def __exit__(self, *exc) -> None:
        import shutil
        if getattr(self, "parent_w", None) is not None:
            os.close(self.parent_w)
            self.parent_w = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except Exception:  # noqa: BLE001
                self.proc.kill()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)



@contextmanager
def serving(env: dict, enabled: bool = True, preload: tuple[str, ...] = PRELOAD):
    """The environment to run ``dvc repro`` with: ``env`` plus a running server's address when ``enabled``
    and the server starts; otherwise ``env`` (every stage then runs in its own process), with a note."""
    if not enabled:
        yield env
        return
    srv = StageServer(env, preload=preload)
    try:
        senv = srv.__enter__()
    except (RuntimeError, OSError) as e:
        print(f"stage server not started ({e}); every stage runs in its own process", file=sys.stderr)
        yield env
        return
    try:
        yield senv
    finally:
        srv.__exit__(None, None, None)
