"""A blackbox matcher behind an HTTP endpoint (standard library only).

Protocol
--------
The matcher sends the images in batches of at most `batch_size`, one HTTP POST to `url` per batch,
and expects the embeddings of that batch, one row per image, in the order sent. Images are uint8,
shaped as the matcher's `input_shape` (h, w, c): RGB for c = 3, gray for c = 1, top row first.
The server does no resizing or alignment on the matcher's behalf.

format="json" (the default)
    request   Content-Type: application/json
              {"images": [image, ...]}, each image a nested list h x w x c of ints 0..255
              (so a gray image is [[[v], [v], ...], ...]).
    response  {"embeddings": [[float, ...], ...]}: n rows of `embedding_dim` numbers.

format="npy"
    request   Content-Type: application/octet-stream; the body is `numpy.save` of the uint8 array
              [n, h, w, c] (the .npy format; read it with `numpy.load(io.BytesIO(body))`).
    response  the body is `numpy.save` of a float array [n, embedding_dim] (float32 preferred;
              pickled object arrays are refused).

Status codes
    200           the answer.
    429, 5xx      transient: the matcher retries (see below).
    anything else a permanent error: no retry; the matcher raises MatcherError with the status and
                  the first 200 characters of the response body, so put the reason there.

Client behaviour: each request times out after `timeout` seconds. Connection errors, timeouts,
429 and 5xx are retried up to `retries` times, waiting `backoff * 2**k` seconds before retry k
(k = 0, 1, ...); after the last attempt the matcher raises MatcherError naming the URL, the number
of attempts and the last error. An answer with the wrong number of rows or columns, or that does
not parse, is an error (not retried).

`embedding_dim` is required: the matcher must know it before its first query (a probe image would
cost a query).

Queries: `queries_sent` counts images in every request sent, retries included (a failed attempt
may still have reached the model); `requests_sent` counts requests. With `query_budget > 0` the
matcher never sends more than that many images over its lifetime: a call to `embed` that could
exceed the budget raises MatcherError before sending anything, as does a retry that would.

`store_key` is "http-" + the first 12 hex digits of the SHA-1 of the URL.
"""
from __future__ import annotations

import hashlib
import http.client
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

from dibigan_tf.matchers.base import FixedMatcher, MatcherError

_CONTENT_TYPES = {"json": "application/json", "npy": "application/octet-stream"}


def _describe(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        error = error.reason if isinstance(error.reason, BaseException) else error
    if isinstance(error, TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}"


class HttpMatcher(FixedMatcher):
    name = "http"
    differentiable = False

    def __init__(self, url: str, *, input_shape, embedding_dim: int, format: str = "json",
                 batch_size: int = 32, timeout: float = 30.0, retries: int = 3,
                 backoff: float = 0.5, query_budget: int = 0):
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise MatcherError(f"http matcher: {url!r} is not an http(s) URL")
        if format not in _CONTENT_TYPES:
            raise MatcherError(f"http matcher: format={format!r}, expected 'json' or 'npy'")
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise MatcherError(f"http matcher: input_shape={input_shape!r}, expected (h, w, c)")
        if isinstance(embedding_dim, bool) or int(embedding_dim) != embedding_dim \
                or embedding_dim < 1:
            raise MatcherError(f"http matcher: embedding_dim={embedding_dim!r}, expected a "
                               f"positive int")
        if int(batch_size) < 1 or int(retries) < 0 or timeout <= 0 or backoff < 0 \
                or int(query_budget) < 0:
            raise MatcherError("http matcher: batch_size must be >= 1, retries >= 0, timeout > 0, "
                               "backoff >= 0 and query_budget >= 0")
        self.url = url
        self.format = format
        self._input_shape = shape
        self._dim = int(embedding_dim)
        self.batch_size = int(batch_size)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.query_budget = int(query_budget)
        self.queries_sent = 0
        self.requests_sent = 0
        self._key = "http-" + hashlib.sha1(self.url.encode()).hexdigest()[:12]


    def _check_budget(self, n):
        if self.query_budget and self.queries_sent + n > self.query_budget:
            left = self.query_budget - self.queries_sent
            raise MatcherError(f"http matcher: query budget exceeded: {self.queries_sent} of "
                               f"{self.query_budget} images used, {left} left, and {n} more would "
                               f"be sent to {self.url}; nothing was sent")

    def _encode(self, batch: np.ndarray) -> bytes:
        if self.format == "json":
            return json.dumps({"images": batch.tolist()}, separators=(",", ":")).encode()
        buffer = io.BytesIO()
        np.save(buffer, batch, allow_pickle=False)
        return buffer.getvalue()

    def _decode(self, body: bytes, n: int) -> np.ndarray:
        try:
            if self.format == "json":
                out = np.asarray(json.loads(body)["embeddings"], dtype=np.float32)
            else:
                out = np.load(io.BytesIO(body), allow_pickle=False)
                if out.dtype.kind not in "fiu":
                    raise ValueError(f"an array of dtype {out.dtype}")
                out = out.astype(np.float32)
        except Exception as error:
            raise MatcherError(f"http matcher: {self.url} answered something that is not a "
                               f"{self.format} embeddings answer ({_describe(error)}): "
                               f"{body[:200]!r}") from None
        if out.shape != (n, self._dim):
            raise MatcherError(f"http matcher: {self.url} answered {n} images with embeddings of "
                               f"shape {out.shape}, expected {(n, self._dim)}")
        return out

    def _post(self, body: bytes, n: int) -> bytes:
        content_type = _CONTENT_TYPES[self.format]
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self._check_budget(n)
            self.queries_sent += n
            self.requests_sent += 1
            request = urllib.request.Request(self.url, data=body, method="POST", headers={
                "Content-Type": content_type, "Accept": content_type})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as error:
                try:
                    detail = error.read()[:200].decode("utf-8", "replace")
                except Exception:
                    detail = ""
                if error.code == 429 or 500 <= error.code < 600:
                    last = f"HTTP {error.code} {error.reason}: {detail}"
                    continue
                raise MatcherError(f"http matcher: {self.url} answered HTTP {error.code} "
                                   f"{error.reason}: {detail}") from None
            except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
                # OSError covers TimeoutError and ConnectionError (refused, reset)
                last = _describe(error)
        raise MatcherError(f"http matcher: {self.url} failed after {self.retries + 1} attempts; "
                           f"last error: {last}")

    def _embed(self, images):
        self._check_budget(len(images))
        parts = [np.zeros((0, self._dim), np.float32)]
        for start in range(0, len(images), self.batch_size):
            batch = np.ascontiguousarray(images[start:start + self.batch_size])
            parts.append(self._decode(self._post(self._encode(batch), len(batch)), len(batch)))
        return np.concatenate(parts)
