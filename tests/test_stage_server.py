"""The warm stage interpreter (uniapl.stage_server): a delegated script sees the client's argv, directory,
environment and stdio, and its exit status, signals and death are the client's. (That a real stage's
outputs are byte-identical either way is checked on the quick pipeline in tests/test_pipeline.py.)"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from uniapl.stage_server import ENV_VAR, StageServer, env_difference

SCRIPT = textwrap.dedent('''
    from uniapl.stage_server import delegate

    if __name__ == "__main__":
        delegate()

    import os, sys, time
    if __name__ == "__main__":
        print("pid", os.getpid(), "argv", sys.argv[1:], "cwd", os.getcwd(), "x", os.environ.get("X_TEST"),
              "dvc", os.environ.get("DVC_ROOT"), "path0", sys.path[0], "imported", os.environ.get("X_IMPORTED"),
              "drop", os.environ.get("X_DROP"), flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        if sys.argv[1:2] == ["sleep"]:
            open(sys.argv[2], "w").write(str(os.getpid()))
            time.sleep(60)
        sys.exit(int(sys.argv[1]) if sys.argv[1:2] and sys.argv[1].isdigit() else 0)
''')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server whose preloaded module sets a variable at import (as torch sets KMP_*), started from an
    environment without it."""
    d = tmp_path_factory.mktemp("stage")
    (d / "sets_env_at_import.py").write_text("import os\nos.environ['X_IMPORTED'] = 'yes'\nos.environ.pop('X_DROP', None)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("X_IMPORTED", "X_DROP")}
    env.update(X_TEST="server", X_DROP="1", PYTHONPATH=os.pathsep.join([str(d), env.get("PYTHONPATH", "")]))
    with StageServer(env, preload=("json", "sets_env_at_import")) as senv:
        yield senv, d


def _script(d):
    p = d / "stage_script.py"
    p.write_text(SCRIPT)
    return p


def test_delegated_script_sees_the_clients_argv_cwd_env_and_stdio(server, tmp_path):
    env, d = server
    script = _script(d)
    r = subprocess.run([sys.executable, str(script), "7", "a b"], cwd=tmp_path, env={**env, "DVC_ROOT": "/x"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 7, r.stderr
    pid = int(r.stdout.split()[1])
    # the client's environment, with what the server's imports changed (as a fresh process's imports would)
    assert f"argv ['7', 'a b'] cwd {tmp_path} x server dvc /x path0 {d} imported yes drop None" in r.stdout
    assert "to stderr" in r.stderr and "running in this process" not in r.stderr
    assert pid != os.getpid()


def test_a_different_environment_runs_in_its_own_process(server, tmp_path):
    env, d = server
    r = subprocess.run([sys.executable, str(_script(d))], cwd=tmp_path, env={**env, "X_TEST": "client"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "environment differs from the server's (X_TEST)" in r.stderr and "x client" in r.stdout


def test_no_server_runs_in_this_process(tmp_path):
    env = {**os.environ, ENV_VAR: str(tmp_path / "none.sock")}
    r = subprocess.run([sys.executable, str(_script(tmp_path)), "3"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "not reachable" in r.stderr


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_signal_or_the_death_of_the_client_ends_the_child(server, tmp_path, how):
    env, d = server
    marker = tmp_path / "child.pid"
    proc = subprocess.Popen([sys.executable, str(_script(d)), "sleep", str(marker)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for _ in range(200):
        if marker.exists() and marker.read_text():
            break
        time.sleep(0.05)
    child = int(marker.read_text())
    proc.send_signal(getattr(signal, how))
    proc.wait(timeout=30)
    if how == "SIGTERM":
        assert proc.returncode == -signal.SIGTERM  # the child's fate, reported as the client's
    for _ in range(200):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"child {child} still alive after its client got {how}")


def test_env_difference_ignores_dvc_and_shell_variables():
    a = {"A": "1", "DVC_ROOT": "/a", "PWD": "/a", "SHLVL": "1", ENV_VAR: "/s"}
    b = {"A": "1", "DVC_ROOT": "/b", "PWD": "/b", "SHLVL": "2", "DVC_EXP_NAME": "e"}
    assert env_difference(a, b) == []
    assert env_difference(a, {**b, "A": "2", "B": "x"}) == ["A", "B"]


def test_exit_handlers_run_when_a_delegated_stage_fails(server, tmp_path):
    """A stage that exits 2 (a user error) still runs its atexit handlers, as interpreter shutdown would."""
    env, d = server
    script = d / "atexit_script.py"
    script.write_text(textwrap.dedent('''
        from uniapl.stage_server import delegate

        if __name__ == "__main__":
            delegate()

        import atexit, sys
        atexit.register(lambda: open(sys.argv[1], "w").write("ran"))
        sys.exit(2)
    '''))
    marker = tmp_path / "atexit.txt"
    r = subprocess.run([sys.executable, str(script), str(marker)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "running in this process" not in r.stderr
    assert marker.read_text() == "ran"


def test_a_server_that_cannot_start_leaves_every_stage_in_its_own_process(capsys):
    from uniapl.stage_server import serving
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    with serving(env, True, preload=("no_such_module_here",)) as got:
        assert got == env  # no server address: stages run as plain `dvc repro` runs them
    assert "stage server not started" in capsys.readouterr().err
    with serving(env, True, preload=("json",)) as got:
        assert os.path.exists(got[ENV_VAR])
    assert not os.path.exists(got[ENV_VAR])  # stopped and cleaned up


def test_another_interpreter_or_flags_run_in_their_own_process(server, tmp_path):
    env, d = server
    r = subprocess.run([sys.executable, "-O", str(_script(d))], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "another interpreter or flags" in r.stderr
