"""Fixtures shared by the test modules: a matcher service on 127.0.0.1 (`serve`). Plain helpers
(paths, the tiny run's flags) are in tests/support.py."""
import http.server
import io
import json
import threading
import time

import numpy as np
import pytest

from tests.support import server_embedding


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
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/embed", srv.log

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()
