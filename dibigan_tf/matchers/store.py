"""The feature store: every image is sent to the blackbox matcher once, ever.

Features are kept on disk in shards (`<root>/<matcher.store_key>/shard-NNNNN.npz`, each holding the
SHA-1 of the image bytes and the embedding), reused by every stage and every later run. Queries go
out in chunks (at most one request of the matcher's, `request_batch`, when it has one: the HTTP
matcher) and each answered chunk is written as a shard before the next is sent, so an interrupted
extraction resumes where it stopped and a matcher that fails mid-way loses at most the chunk in
flight. A shard that no longer reads is set aside (`.damaged`) and only its images are asked
again.

`<root>/<matcher key>/queries.json` counts, over every process: `queries`, every image sent to
the matcher (retries and failed requests included: a failed request may still have reached, and
been billed by, the service), `answered`, the images answered and stored, and `retried`, the
images sent again by retries. A matcher with an `on_send` hook (HTTP) has each request counted
before it leaves, and learns what earlier processes sent (`budget_spent_before`), so its query
budget holds across processes.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
import time

import numpy as np
from absl import logging

from dibigan_tf.data.files import write_json_atomic
from dibigan_tf.matchers.base import Matcher, MatcherError


def image_key(image: np.ndarray) -> bytes:
    """Content hash of one image (its shape and pixel bytes)."""
    digest = hashlib.sha1(repr(image.shape).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest().encode()


def _atomic_savez(path, **arrays):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class FeatureStore:
    def __init__(self, root: str, matcher: Matcher, key: str | None = None,
                 chunk_size: int = 1000, progress=None):
        self.matcher = matcher
        self.dir = os.path.join(root, key or matcher.store_key)
        os.makedirs(self.dir, exist_ok=True)
        self.chunk_size = chunk_size
        self.progress = progress
        self._index = {}
        self._rows = []
        self.session_queries = 0
        if hasattr(matcher, "on_send"):
            matcher.on_send = self._sent
            matcher.budget_spent_before = max(
                0, self.total_queries - int(getattr(matcher, "queries_sent", 0)))
        for shard in sorted(glob.glob(os.path.join(self.dir, "shard-*.npz"))):
            try:
                with np.load(shard) as data:
                    keys, feats = data["keys"], data["features"]
            except Exception as error:  # cut short or overwritten: its images are asked again
                os.replace(shard, shard + ".damaged")
                logging.warning("%s: damaged feature-store shard (%s: %s), set aside as "
                                "%s.damaged; its images will be sent to the matcher again",
                                shard, type(error).__name__, " ".join(str(error).split())[:200],
                                os.path.basename(shard))
                continue
            if feats.ndim != 2 or feats.shape[1] != matcher.embedding_dim:
                raise MatcherError(f"{shard}: stored features have shape {feats.shape}, but "
                                   f"{matcher.name} gives {matcher.embedding_dim}-D vectors; "
                                   f"use another store key or delete {self.dir}")
            for k, f in zip(keys, feats):
                self._index[bytes(k)] = len(self._rows)
                self._rows.append(f)

    def _next_shard(self) -> str:
        """A shard path after every existing one (also after shards set aside as damaged)."""
        numbers = [int(os.path.basename(p)[len("shard-"):].split(".")[0])
                   for p in glob.glob(os.path.join(self.dir, "shard-*.npz*"))
                   if os.path.basename(p)[len("shard-"):].split(".")[0].isdigit()]
        return os.path.join(self.dir, f"shard-{max(numbers, default=-1) + 1:05d}.npz")

    def counts(self) -> dict:
        """{"queries": images sent, "answered": images answered, "retried": images sent again
        by retries}, over every process (a file from before `answered` was kept: all answered)."""
        path = os.path.join(self.dir, "queries.json")
        if not os.path.exists(path):
            return {"queries": 0, "answered": 0, "retried": 0}
        with open(path) as handle:
            saved = json.load(handle)
        sent = int(saved["queries"])
        return {"queries": sent, "answered": int(saved.get("answered", sent)),
                "retried": int(saved.get("retried", 0))}

    @property
    def total_queries(self) -> int:
        """Images ever sent to the matcher through this store (retries included)."""
        return self.counts()["queries"]

    @property
    def total_answered(self) -> int:
        return self.counts()["answered"]

    def _add(self, **counts):
        state = self.counts()
        for key, value in counts.items():
            state[key] += int(value)
        state["matcher"] = self.matcher.name
        write_json_atomic(os.path.join(self.dir, "queries.json"), state)

    def _sent(self, n, retry=False):
        """The matcher's hook: n images are about to be sent."""
        self.session_queries += n
        self._add(queries=n, retried=n if retry else 0)

    def __len__(self):
        return len(self._rows)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Embeddings of `images` (uint8 [n,h,w,c]), querying the matcher only for unseen ones."""
        keys = [image_key(im) for im in images]
        missing, seen = [], set()
        for i, k in enumerate(keys):
            if k not in self._index and k not in seen:
                missing.append(i)
                seen.add(k)
        start = time.time()
        step = min(self.chunk_size, int(getattr(self.matcher, "request_batch", 0) or
                                        self.chunk_size))
        hooked = getattr(self.matcher, "on_send", None) == self._sent
        for c in range(0, len(missing), step):
            chunk = missing[c:c + step]
            try:
                feats = self.matcher.embed(images[chunk])  # validates shape and finiteness
            finally:
                if not hooked:   # a matcher without the hook: its images count when handed over
                    self._sent(len(chunk))
            shard = self._next_shard()
            chunk_keys = np.array([keys[i] for i in chunk])
            _atomic_savez(shard, keys=chunk_keys, features=feats)
            self._add(answered=len(chunk))
            for k, f in zip(chunk_keys, feats):
                self._index[bytes(k)] = len(self._rows)
                self._rows.append(f)
            if self.progress:
                self.progress(min(c + step, len(missing)), len(missing),
                              time.time() - start)
        return np.stack([self._rows[self._index[k]] for k in keys]).astype(np.float32)
