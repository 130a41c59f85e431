"""Runs the tests' Python command lines (`python <script> ...`, `python -c <code> ...`) as forks
of one process that has already imported TensorFlow and the package.

Each command is still a process of its own, as `subprocess.run` would start: its own argv,
environment, working directory, exit status, stdout and stderr, its own absl flags (the scripts
are not imported before the fork) and a TensorFlow that has not initialised (no op has run in
the server), so a child can still split the CPU into logical devices. What the fork spares is
TensorFlow's import, 4-6 s of CPU per command on a 2-core machine and about a third of the
suite's CPU (docs/testing.md).

Client side, `run(argv, ...)` returns a `subprocess.CompletedProcess` like `subprocess.run(argv,
capture_output=True, text=True, ...)`; each test process (pytest-xdist worker) starts one
server the first time it runs a command and keeps it to its end. `DIBIGAN_TEST_FORK=0` makes
`run` start a fresh interpreter instead, for a failure that only the slow path shows.
`run(..., kill_when=condition)` SIGKILLs the command as soon as `condition()` holds (checked
every 50 ms), for the tests that kill a training part-way and resume it. Commands that must
run as several processes at once (the multi-worker tests) use `subprocess` itself.

Server side (`python tests/forkserver.py`): one JSON request per line on stdin, forked at once;
the reply lines on stdout are `{"pid": ...}` then `{"returncode": ...}`.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: What the server imports before it forks: TensorFlow (through the package's Keras selection)
#: and the package's modules that every command line loads; no experiments/ script (each
#: defines its absl flags at import).
PRELOAD = ("dibigan_tf.keras_compat", "tensorflow", "tensorflow_probability",
           "dibigan_tf.training.pipeline", "dibigan_tf.training.stages",
           "dibigan_tf.evaluation.report", "dibigan_tf.data.faces", "dibigan_tf.data.align",
           "absl.app", "absl.flags")


# ----------------------------------------------------------------------------- server
def _child(request):
    """In the fork: becomes `python <argv[1:]>` and never returns."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        args = request["argv"][1:]
        if args[0] == "-c":
            sys.argv = ["-c"] + args[2:]
            sys.path[0] = ""
            namespace = {"__name__": "__main__", "__builtins__": __builtins__}
            exec(compile(args[1], "<string>", "exec"), namespace)
        else:
            import runpy
            sys.argv = list(args)
            sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
            runpy.run_path(args[0], run_name="__main__")
        code = 0
    except SystemExit as exit_:   # as the interpreter exits: None is 0, a message is 1
        code = exit_.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    except BaseException:   # noqa: BLE001  (what the interpreter does with an uncaught error)
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve():
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:   # an optional extra (dlib) missing: the child imports what it can
            pass
    _reply({"ready": True})
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        _reply({"pid": pid})
        _, status = os.waitpid(pid, 0)
        _reply({"returncode": os.waitstatus_to_exitcode(status)})


def _reply(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------------------------- client
class _Replies:
    """The server's JSON reply lines, read from its stdout with os.read into a buffer of their
    own: a buffered `readline` could take both reply lines of a command that exits at once in
    one read, leaving the second where `select` does not see it."""

    def __init__(self, stream):
        self.fd, self.pending = stream.fileno(), b""

    def next(self, timeout):
        """The next reply, or None if none came within `timeout` s; EOFError once the pipe has
        closed."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise EOFError
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)


class _Server:
    def __init__(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=_pythonpath())
        self.log = tempfile.NamedTemporaryFile(prefix="forkserver-", suffix=".log")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env=env, text=True)
        self.replies = _Replies(self.proc.stdout)
        if self._read(timeout=300) is None:   # {"ready": true}
            self.proc.kill()
            self._stopped("did not start in 300 s")

    def _read(self, timeout):
        try:
            return self.replies.next(timeout)
        except EOFError:
            self._stopped("stopped")

    def _stopped(self, what):
        with open(self.log.name, errors="replace") as handle:
            tail = handle.read()[-3000:]
        raise RuntimeError(f"the fork server (tests/forkserver.py) {what}; its stderr:\n{tail}")

    def run(self, argv, env, cwd, timeout, kill_when):
        with tempfile.TemporaryDirectory(prefix="forkrun-") as tmp:
            out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
            self.proc.stdin.write(json.dumps({"argv": list(argv), "env": env, "cwd": cwd,
                                              "stdout": out, "stderr": err}) + "\n")
            self.proc.stdin.flush()
            pid = self._read(timeout=60)["pid"]

            def returncode(seconds):
                reply = self._read(timeout=seconds)
                return None if reply is None else reply["returncode"]

            def kill():   # (the server may have reaped it a moment ago)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

            status, timed_out = _wait(returncode, kill, timeout, kill_when)
            return _outcome(argv, out, err, status, timed_out, timeout)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def _read_text(path):
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


def _wait(returncode, kill, timeout, kill_when):
    """Waits up to `timeout` s for a command's exit status (`returncode(seconds)`: the status,
    or None while it runs), killing it (`kill()`) once `kill_when()` holds, polled every 50 ms,
    or at the timeout. Returns (status, timed_out)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            kill()
            return returncode(60), True
        status = returncode(min(left, 0.05) if kill_when else left)
        if status is not None:
            return status, False
        if kill_when is not None and kill_when():
            kill()
            return returncode(60), False


def _outcome(argv, out, err, status, timed_out, timeout):
    """What `subprocess.run` gives for a command whose stdout and stderr went to files."""
    stdout, stderr = _read_text(out), _read_text(err)
    if timed_out:
        raise subprocess.TimeoutExpired(argv, timeout, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(list(argv), status, stdout, stderr)


def _pythonpath():
    """This checkout first, so that the server imports the package the tests import (also when
    the interpreter's own install of the package points at another checkout)."""
    parts = [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(parts)


_server = None


def run(argv, env=None, cwd=None, timeout=900, kill_when=None):
    """`subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd,
    timeout=timeout)` for `argv` = [sys.executable, <script> | -c <code>, ...], served by a fork
    of this process's server (started on first use). With `kill_when`, the command is killed by
    SIGKILL once `kill_when()` returns true (returncode -9), checked every 50 ms."""
    global _server
    env = dict(os.environ if env is None else env)
    cwd = os.path.abspath(cwd or os.getcwd())
    python_command = (len(argv) >= 2 and argv[0] == sys.executable and
                      (argv[1] == "-c" and len(argv) >= 3 or argv[1].endswith(".py")))
    if os.environ.get("DIBIGAN_TEST_FORK", "1") == "0" or not python_command:
        return _run_fresh(argv, env, cwd, timeout, kill_when)
    if _server is None:
        _server = _Server()
        atexit.register(_server.close)
    return _server.run(argv, env, cwd, timeout, kill_when)


def _run_fresh(argv, env, cwd, timeout, kill_when):
    """`run` in a process of its own, started by `subprocess`."""
    with tempfile.TemporaryDirectory(prefix="forkrun-") as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        with open(out, "w") as out_handle, open(err, "w") as err_handle:
            proc = subprocess.Popen(list(argv), stdout=out_handle, stderr=err_handle, env=env,
                                    cwd=cwd)

        def returncode(seconds):
            try:
                return proc.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                return None

        status, timed_out = _wait(returncode, proc.kill, timeout, kill_when)
        return _outcome(argv, out, err, status, timed_out, timeout)


if __name__ == "__main__":
    serve()
