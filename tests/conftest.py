"""Fixtures shared by the test modules: a matcher service on 127.0.0.1 (`serve`), and the tiny
digits run's trained stages (`tiny_flow`, `tiny_base`, `tiny_run`), trained once per test
session and shared by the pytest-xdist workers. Plain helpers (paths, the tiny run's flags,
train.py's command line) are in tests/support.py."""
import fcntl
import http.server
import io
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest

from tests.support import TINY, TINY_GAN_FLAGS, copy_stages, run_train, server_embedding

# TensorFlow gives every process one intra-op thread per core. With several test processes
# (pytest-xdist) that oversubscribes the CPU, so each process, and the training processes its
# tests start, gets its share of the cores (one each for two workers on two cores; the measured
# difference is in docs/testing.md). A value set by the caller wins.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS",
                          str(max(1, (os.cpu_count() or 1) // _WORKERS)))


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a client that timed out: not a test error
        pass


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, status, body, content_type="application/json"):
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_POST(self):
        srv = self.server
        body = self.rfile.read(int(self.headers["Content-Length"]))
        is_npy = self.headers["Content-Type"] == "application/octet-stream"
        if is_npy:
            images = np.load(io.BytesIO(body), allow_pickle=False)
        else:
            images = np.asarray(json.loads(body)["images"])
        assert images.dtype == np.uint8 or not is_npy
        with srv.lock:
            index = len(srv.log)
            srv.log.append(len(images))
            srv.headers_seen.append(self.headers.get("X-Api-Key"))
        action = srv.script(index)
        if srv.require_key and self.headers.get("X-Api-Key") != srv.require_key:
            action = 401
        if isinstance(action, int):   # the body echoes the key, as a careless service might
            return self._reply(action, b"error " + str(action).encode() + b": bad image size " +
                               str(self.headers.get("X-Api-Key")).encode())
        if action == "sleep":
            time.sleep(2.0)
        emb = server_embedding(images.astype(np.uint8))
        if action == "wrong_dim":
            emb = emb[:, :-1]
        elif action == "wrong_rows":
            emb = emb[:-1]
        elif action == "nan":
            emb[-1, 0] = np.nan
        elif action == "garbage":
            return self._reply(200, b"<html>hello</html>", "text/html")
        if is_npy:
            buffer = io.BytesIO()
            np.save(buffer, emb.astype(np.float32))
            return self._reply(200, buffer.getvalue(), "application/octet-stream")
        return self._reply(200, json.dumps({"embeddings": emb.tolist()}).encode())


@pytest.fixture
def serve():
    """serve(script, require_key) starts a server on 127.0.0.1 answering request i with script(i)
    (HTTP 401 when require_key is set and the X-Api-Key header differs):
    "ok", an HTTP status (int), "sleep", "wrong_dim", "wrong_rows" or "garbage"; returns
    (url, log), log being the number of images in each request received."""
    servers = []

    def start(script=lambda i: "ok", require_key=None):
        srv = _Server(("127.0.0.1", 0), _Handler)
        srv.script, srv.log, srv.lock = script, [], threading.Lock()
        srv.headers_seen, srv.require_key = [], require_key
        # (shutdown() waits for the loop's next poll: 0.5 s by default, per test)
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/embed", srv.log

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


# --------------------------------------------------------------------------- shared tiny run
def _shared_root(tmp_path_factory):
    """The directory every xdist worker of this test session sees (the parent of the workers'
    own base directories), or this process's base directory without xdist."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


def _failure(proc):
    """"" for a train.py run that succeeded, else the end of its output (a build's error)."""
    return "" if proc.returncode == 0 else (proc.stdout + proc.stderr)[-3000:]


def _built_once(root, name, build):
    """`build(path)` run by the first worker that asks, under a file lock; the others wait for
    it and reuse the result. A failed build is reported to every test that needs it."""
    path = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        failed = root / f"{name}.failed"
        if failed.exists():
            pytest.fail(f"the shared {name} failed to build:\n{failed.read_text()}")
        if not (path / "built").exists():
            if path.exists():
                shutil.rmtree(path)
            error = build(path)
            if error:
                failed.write_text(error)
                pytest.fail(f"the shared {name} failed to build:\n{error}")
            (path / "built").write_text("ok")
    return path


@pytest.fixture(scope="session")
def tiny_flow(tmp_path_factory):
    """H of the tiny digits run (tests/support.TINY) trained on its own (`train.py --stage=flow`,
    run `h`), once per session: the run directory, with `flow/metrics.json`."""
    def build(path):
        return _failure(run_train([f"--checkpoint_dir={path}", "--run_name=h", "--stage=flow"]
                                  + TINY))
    return _built_once(_shared_root(tmp_path_factory), "tiny-flow", build) / "h"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, tiny_flow):
    """The tiny digits run's trained stages before G, once per session: the matcher, the feature
    store (every training and held-out image queried once, nothing else), F^S
    (`train.py --stage=student`), the split and `tiny_flow`'s H, which is the H such a run trains
    (same flags, seed and images). Copy them into a run with `copy_stages`; a run with the same F,
    F^S and H flags loads them as finished stages and trains only G."""
    def build(path):
        error = _failure(run_train([f"--checkpoint_dir={path}", "--run_name=tiny",
                                    "--stage=student"] + TINY))
        if error:
            return error
        copy_stages(tiny_flow, path / "tiny", ["flow"])
        os.remove(path / "tiny" / "config.json")   # a run copying these writes its own
        return ""
    return _built_once(_shared_root(tmp_path_factory), "tiny-base", build) / "tiny"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_flow, tiny_base):
    """A finished tiny digits run, once per session: `tiny_base`'s matcher, store and F^S, H
    loaded from `tiny_flow` (`--flow_from_run`, so the run has no flow stage of its own), G
    trained with TINY_GAN_FLAGS, and the report. Tests that change a run work on a copy."""
    def build(path):
        copy_stages(tiny_base, path / "tiny", ["matcher", "features", "student", "split.json"])
        return _failure(run_train([f"--checkpoint_dir={path}", "--run_name=tiny",
                                   f"--flow_from_run={tiny_flow}"] + TINY + TINY_GAN_FLAGS))
    return _built_once(_shared_root(tmp_path_factory), "tiny-run", build) / "tiny"


#: The two MirroredStrategy cases, the suite's longest tests (about 45-55 s each), need no shared
#: fixture: collected first, they start the run on the first test process while the other
#: builds the tiny run's stages, instead of landing together at the end of one process's queue
#: with the other idle (pytest-xdist hands each process a block of consecutive tests first).
FIRST = ("tests/training/test_mirrored.py::test_every_trainable_under_mirrored_strategy_on_two",
         "tests/training/test_mirrored.py::test_one_step_on_four_logical_devices")


def pytest_collection_modifyitems(items):
    first = [item for item in items if item.nodeid.startswith(FIRST)]
    items[:] = first + [item for item in items if item not in first]
