"""`--matcher=...`: the registry opens each adapter from the run's settings, refuses a matcher
without what it needs in one line, and a run uses an opened matcher through the feature store
(here a local HTTP service on the digits)."""
import dataclasses
import os
import sys

import pytest

from dibigan_tf.config import MatcherConfig
from dibigan_tf.matchers.base import MatcherError
from dibigan_tf.matchers.registry import MATCHERS, open_matcher
from tests import forkserver
from tests.support import ROOT


@pytest.mark.parametrize("name, field, message", [
    ("keras", "path", "--matcher_path"), ("savedmodel", "path", "--matcher_path"),
    ("onnx", "path", "--matcher_path"), ("http", "url", "--matcher_url")])
def test_matchers_say_what_they_need(name, field, message):
    with pytest.raises(MatcherError, match=message):
        open_matcher(MatcherConfig(name=name), (32, 32, 3))


def test_http_needs_the_embedding_dim_and_unknown_names_are_refused():
    with pytest.raises(MatcherError, match="--matcher_embedding_dim"):
        open_matcher(MatcherConfig(name="http", url="http://127.0.0.1:9/x"), (8, 8, 3))
    with pytest.raises(MatcherError, match="unknown matcher"):
        open_matcher(MatcherConfig(name="arcface"), (8, 8, 3))
    with pytest.raises(MatcherError, match="trained by the digits pipeline"):
        open_matcher(MatcherConfig(name="lenet"), (8, 8, 3))
    assert set(MATCHERS) == {"lenet", "keras", "savedmodel", "onnx", "dlib", "dlib_keras",
                             "http"}


def test_registry_passes_the_settings_through(tmp_path):
    from tests.matchers.test_adapters import _tiny_model
    path = str(tmp_path / "m.keras")
    _tiny_model(0).save(path)
    keras_matcher = open_matcher(MatcherConfig(name="keras", path=path, input_range="zero_1"),
                                 (16, 16, 3))
    assert keras_matcher.input_range == "zero_1" and keras_matcher.differentiable
    http = open_matcher(MatcherConfig(name="http", url="http://127.0.0.1:9/x", embedding_dim=7,
                                      input_size=24, retries=1), (32, 32, 1))
    assert http.input_shape == (24, 24, 1) and http.embedding_dim == 7
    dlib = pytest.importorskip("dlib")
    assert dlib
    d = open_matcher(dataclasses.replace(MatcherConfig(name="dlib"), chip="landmarks"),
                     (96, 96, 3))
    assert d.input_shape == (96, 96, 3) and d.chip == "landmarks"


def test_features_stage_through_an_http_matcher(tmp_path, serve):
    url, log = serve()
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "train.py"),
           f"--checkpoint_dir={tmp_path}", "--run_name=web", "--stage=features",
           "--matcher=http", f"--matcher_url={url}", "--matcher_embedding_dim=3",
           "--matcher_http_format=npy", "--max_train_images=120", "--holdout_per_class=3"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    run = forkserver.run(cmd, timeout=300, env=env)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "blackbox_queries: 150" in run.stdout
    assert sum(log) == 150
    stores = os.listdir(tmp_path / "features")
    assert len(stores) == 1 and stores[0].startswith("http-")
    # the same command again sends nothing
    again = forkserver.run(cmd, timeout=300, env=env)
    assert again.returncode == 0 and "blackbox_queries_this_session: 0" in again.stdout
    assert sum(log) == 150
    # a matcher without its address is refused at start, in one line, before any stage runs
    bad = forkserver.run(cmd[:5] + ["--matcher=onnx", "--run_name=x"], timeout=300, env=env)
    assert bad.returncode == 2 and "--matcher_path" in bad.stderr
