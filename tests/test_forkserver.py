"""tests/forkserver.py answers as `subprocess.run` would: argv, environment, working directory,
exit status, stdout and stderr of a process of its own, a timeout that kills it, and a
TensorFlow that has not initialised (a child can split the CPU into logical devices)."""
import os
import subprocess
import sys
import textwrap

import pytest

from tests import forkserver

PROBE = textwrap.dedent("""
    import json, os, sys
    print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "var": os.environ.get("PROBE_VAR"),
                      "pid": os.getpid(), "tf_loaded": "tensorflow" in sys.modules}))
    print("to stderr", file=sys.stderr)
    sys.exit(int(sys.argv[1]))
""")


def _probe(tmp_path, code, fork=True):
    argv = [sys.executable, "-c", PROBE, str(code), "b c"]
    env = dict(os.environ, PROBE_VAR="x=1")
    if fork:
        return forkserver.run(argv, env=env, cwd=str(tmp_path), timeout=120)
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=str(tmp_path),
                          timeout=120)


@pytest.mark.skipif(os.environ.get("DIBIGAN_TEST_FORK", "1") == "0",
                    reason="DIBIGAN_TEST_FORK=0: run() starts no fork to compare")
def test_a_fork_answers_as_a_fresh_interpreter(tmp_path):
    import json
    forked, fresh = _probe(tmp_path, 3), _probe(tmp_path, 3, fork=False)
    assert forked.returncode == fresh.returncode == 3
    a, b = json.loads(forked.stdout), json.loads(fresh.stdout)
    assert a["argv"] == b["argv"] == ["-c", "3", "b c"]
    assert a["cwd"] == b["cwd"] == str(tmp_path) and a["var"] == b["var"] == "x=1"
    assert a["pid"] not in (os.getpid(), b["pid"])
    assert a["tf_loaded"] and not b["tf_loaded"]   # what the fork spares
    assert forked.stderr.strip().endswith("to stderr") and "to stderr" not in forked.stdout
    # a second command in the same server: a clean process again
    assert _probe(tmp_path, 0).returncode == 0


def test_uncaught_error_timeout_and_logical_devices(tmp_path):
    error = forkserver.run([sys.executable, "-c", "raise ValueError('boom')"], timeout=60)
    assert error.returncode == 1 and "ValueError: boom" in error.stderr
    with pytest.raises(subprocess.TimeoutExpired):
        forkserver.run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=2)
    devices = forkserver.run([sys.executable, "-c", textwrap.dedent("""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 3)
        print(len(tf.config.list_logical_devices("CPU")))
    """)], timeout=120)
    assert devices.returncode == 0, devices.stderr[-2000:]
    assert devices.stdout.split() == ["3"]


@pytest.mark.parametrize("fork", ["1", "0"])
def test_kill_when_sigkills_the_command_once_the_condition_holds(tmp_path, monkeypatch, fork):
    """The SIGKILL tests' path, in a fork and (DIBIGAN_TEST_FORK=0) in a fresh interpreter: the
    command writes a file and then sleeps; it is killed once the file exists, its output so far
    kept; a condition that never holds lets the command finish."""
    import signal
    monkeypatch.setenv("DIBIGAN_TEST_FORK", fork)
    marker = tmp_path / "marker"
    code = (f"import time; print('started', flush=True); open({str(marker)!r}, 'w').close(); "
            "time.sleep(60); print('never')")
    killed = forkserver.run([sys.executable, "-c", code], timeout=50,
                            kill_when=marker.exists)
    assert killed.returncode == -signal.SIGKILL
    assert killed.stdout.split() == ["started"]
    done = forkserver.run([sys.executable, "-c", "print('ok')"], timeout=60,
                          kill_when=lambda: False)
    assert done.returncode == 0 and done.stdout.split() == ["ok"]


def test_two_replies_in_one_read_are_both_answered():
    """A command that exits at once: the server's pid and exit-status lines can reach the
    client in one read, and the second must be answered at once, not after the timeout."""
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.stdout.write('{\"pid\": 7}\\n{\"returncode\": 0}\\n'); "
        "sys.stdout.flush(); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        replies = forkserver._Replies(writer.stdout)   # what the client reads, from a stand-in
        assert replies.next(timeout=30) == {"pid": 7}
        assert replies.next(timeout=1) == {"returncode": 0}
        assert replies.next(timeout=0.2) is None
    finally:
        writer.kill()
        writer.wait()
