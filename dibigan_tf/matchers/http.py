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

Every retry is logged (attempt, error, wait). With a feature store, `on_send(n, is_retry)` is called
before each request (the store counts the images in `queries.json` before they leave, so a crash
mid-request still counts them), and `budget_spent_before` holds the images that earlier
processes sent, so `query_budget` holds across processes.

Authentication: `headers` maps header names to secret values (resolved by `resolve_headers` from
`Name:env:VAR` or `Name:file:PATH`, so the secret is never on a command line or in `config.json`).
The values are sent with every request and never appear in errors or logs (any echo of them in a
server's answer is replaced by `***`). Credentials in the URL itself (`user:pass@host`, or a
query parameter named like a key, token, secret, password or signature) are refused, with the
values redacted in the message: put them in a header.

`store_key` is "http-" + the first 12 hex digits of the SHA-1 of the URL (headers are not part
of it: a new key for the same service keeps its stored answers).
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

import os
import re

import numpy as np
from absl import logging

from dibigan_tf.matchers.base import FixedMatcher, MatcherError

_CONTENT_TYPES = {"json": "application/json", "npy": "application/octet-stream"}


#: query parameter names that carry credentials (refused in a URL)
_SECRET_PARAM = re.compile(r"key|token|secret|passw|pwd|auth|sig|credential|session",
                           re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with any user:password and the values of credential-like query parameters
    replaced by `***` (what errors and logs may show)."""
    try:
        parsed = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parsed.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(f"{k}=***" if _SECRET_PARAM.search(k) else f"{k}={v}"
                     for k, v in urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
    return urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, query, ""))


def check_url(url: str) -> str:
    """`url` if it is an http(s) URL without credentials in it; a MatcherError (showing the URL
    redacted) otherwise."""
    try:
        parsed = urllib.parse.urlsplit(url)
    except ValueError:
        raise MatcherError("http matcher: the URL does not parse") from None
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise MatcherError(f"http matcher: {redact_url(url)!r} is not an http(s) URL")
    secret_params = [k for k, _ in urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
                     if _SECRET_PARAM.search(k)]
    if "@" in parsed.netloc or secret_params or parsed.fragment:
        what = ("a user name or password" if "@" in parsed.netloc else
                f"the query parameter(s) {', '.join(secret_params)}" if secret_params
                else "a fragment")
        raise MatcherError(f"http matcher: the URL {redact_url(url)} carries {what}; credentials "
                           f"in a URL end up in logs, config.json and the store key, so they are "
                           f"refused: send them as a header, --matcher_header=Name:env:VAR or "
                           f"Name:file:PATH")
    return url


def resolve_headers(specs) -> dict:
    """{name: value} of `Name:env:VAR` (the value of environment variable VAR) and
    `Name:file:PATH` (the contents of file PATH, stripped) specs. A MatcherError names the spec's
    source, never a value."""
    headers = {}
    for spec in specs or ():
        parts = str(spec).split(":", 2)
        if len(parts) != 3 or parts[1] not in ("env", "file") or not parts[0].strip() \
                or not parts[2]:
            raise MatcherError(f"--matcher_header={parts[0]}:...: expected Name:env:VAR or "
                               f"Name:file:PATH (the secret itself is never given on the command "
                               f"line)")
        name, source, where = parts[0].strip(), parts[1], parts[2]
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name):
            raise MatcherError(f"--matcher_header: {name!r} is not an HTTP header name")
        if source == "env":
            value = os.environ.get(where)
            if not value:
                raise MatcherError(f"--matcher_header={name}:env:{where}: environment variable "
                                   f"{where} is not set or empty")
        else:
            try:
                with open(where, encoding="utf-8") as handle:
                    value = handle.read().strip()
            except (OSError, UnicodeDecodeError) as error:
                raise MatcherError(f"--matcher_header={name}:file:{where}: cannot read it "
                                   f"({type(error).__name__})") from None
            if not value:
                raise MatcherError(f"--matcher_header={name}:file:{where}: the file is empty")
        if "\n" in value or "\r" in value:
            raise MatcherError(f"--matcher_header={name}:{source}:{where}: the value holds a "
                               f"line break")
        headers[name] = value
    return headers


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
                 backoff: float = 0.5, query_budget: int = 0, headers: dict | None = None):
        check_url(url)
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
        self.retries_sent = 0
        self.budget_spent_before = 0   # images sent by earlier processes (set by the store)
        self.on_send = None            # on_send(n, is_retry) before each request of n images
        self._headers = dict(headers or {})
        self._key = "http-" + hashlib.sha1(self.url.encode()).hexdigest()[:12]


    def __repr__(self):
        return f"HttpMatcher({self.url!r}, headers={sorted(self._headers)})"   # names only

    def _scrub(self, text: str) -> str:
        for value in self._headers.values():
            text = text.replace(value, "***")
        return text

    def _check_budget(self, n):
        used = self.budget_spent_before + self.queries_sent
        if self.query_budget and used + n > self.query_budget:
            left = self.query_budget - used
            before = (f" ({self.budget_spent_before} by earlier runs)"
                      if self.budget_spent_before else "")
            raise MatcherError(f"http matcher: query budget exceeded: {used} of "
                               f"{self.query_budget} images used{before}, {left} left, and {n} "
                               f"more would be sent to {self.url}; nothing was sent")

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
            raise MatcherError(self._scrub(
                f"http matcher: {self.url} answered something that is not a {self.format} "
                f"embeddings answer ({_describe(error)}): {body[:200]!r}")) from None
        if out.shape != (n, self._dim):
            raise MatcherError(f"http matcher: {self.url} answered {n} images with embeddings of "
                               f"shape {out.shape}, expected {(n, self._dim)}")
        return out

    def _post(self, body: bytes, n: int) -> bytes:
        content_type = _CONTENT_TYPES[self.format]
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                wait = self.backoff * 2 ** (attempt - 1)
                logging.warning("http matcher: %s: attempt %d of %d failed (%s); retrying %d "
                                "images in %.2g s", self.url, attempt, self.retries + 1, last, n,
                                wait)
                time.sleep(wait)
            self._check_budget(n)
            if self.on_send is not None:
                self.on_send(n, bool(attempt))   # counted before it leaves (crash-safe)
            self.queries_sent += n
            self.requests_sent += 1
            self.retries_sent += n if attempt else 0
            request = urllib.request.Request(self.url, data=body, method="POST", headers={
                **self._headers, "Content-Type": content_type, "Accept": content_type})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as error:
                try:
                    detail = error.read()[:200].decode("utf-8", "replace")
                except Exception:
                    detail = ""
                detail = self._scrub(detail)
                if error.code == 429 or 500 <= error.code < 600:
                    last = f"HTTP {error.code} {error.reason}: {detail}"
                    continue
                raise MatcherError(f"http matcher: {self.url} answered HTTP {error.code} "
                                   f"{error.reason}: {detail}") from None
            except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
                # OSError covers TimeoutError and ConnectionError (refused, reset)
                last = self._scrub(_describe(error))
        raise MatcherError(f"http matcher: {self.url} failed after {self.retries + 1} attempts; "
                           f"last error: {last}")

    @property
    def request_batch(self) -> int:
        """Images per request: the feature store stores the answers of each request as it
        comes, so a failure loses at most the request in flight."""
        return self.batch_size

    def _embed(self, images):
        self._check_budget(len(images))
        parts = [np.zeros((0, self._dim), np.float32)]
        for start in range(0, len(images), self.batch_size):
            batch = np.ascontiguousarray(images[start:start + self.batch_size])
            parts.append(self._decode(self._post(self._encode(batch), len(batch)), len(batch)))
        return np.concatenate(parts)
