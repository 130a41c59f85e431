"""Tests for the matcher adapters: KerasMatcher, OnnxMatcher and HttpMatcher."""
import json
import os
import re
import shutil
import socket
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from dibigan_tf.keras_compat import keras
from dibigan_tf.matchers.base import Matcher, MatcherError
from dibigan_tf.matchers.http import HttpMatcher
from dibigan_tf.matchers.keras_model import KerasMatcher
from dibigan_tf.matchers.onnx_model import OnnxMatcher
from dibigan_tf.matchers.store import FeatureStore

SAFE_KEY = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _pixels(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def test_base_store_key_defaults_to_name():
    class Plain(Matcher):
        name = "plain"
        input_shape = (1, 1, 1)
        embedding_dim = 1

        def _embed(self, images):
            return np.zeros((len(images), 1))

    assert Plain().store_key == "plain"


# ------------------------------------------------------------------------------------------------
# Keras / SavedModel
# ------------------------------------------------------------------------------------------------
def _tiny_model(seed):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 3), name="img")
    x = keras.layers.Conv2D(4, 3, activation="tanh")(inp)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inp, keras.layers.Dense(8, name="emb")(x))


@pytest.fixture(scope="module")
def keras_models(tmp_path_factory):
    """Two tiny models of the same architecture, each saved as .keras and as a SavedModel."""
    root = tmp_path_factory.mktemp("keras")
    out = {}
    for i, seed in enumerate((1, 2), start=1):
        model = _tiny_model(seed)
        model.save(str(root / f"m{i}.keras"))
        tf.saved_model.save(model, str(root / f"sm{i}"))
        out[i] = model
    return root, out


def test_keras_file_and_savedmodel_match_the_model(keras_models):
    root, models = keras_models
    images = _pixels((70, 16, 16, 3))
    expected = models[1](images.astype(np.float32) / 127.5 - 1.0).numpy()
    for path in (root / "m1.keras", root / "sm1"):
        matcher = KerasMatcher(str(path), batch_size=32)  # batches of 32, 32, 6
        assert matcher.input_shape == (16, 16, 3) and matcher.embedding_dim == 8
        assert matcher.differentiable and matcher.name == "keras"
        np.testing.assert_allclose(matcher.embed(images), expected, rtol=1e-5, atol=1e-5)
        assert matcher._embed_fn.experimental_get_tracing_count() == 1  # traced once
    assert not np.allclose(KerasMatcher(str(root / "m2.keras")).embed(images), expected, atol=1e-3)


def test_keras_tf_embed_gives_gradients_and_agrees_with_embed(keras_models):
    root, _ = keras_models
    pixels = _pixels((3, 16, 16, 3), seed=1)
    for path in (root / "m1.keras", root / "sm1"):
        matcher = KerasMatcher.load(path, input_range="zero_1")
        x = tf.Variable(pixels.astype(np.float32) / 127.5 - 1.0)
        with tf.GradientTape() as tape:
            emb = matcher.tf_embed(x)
            loss = tf.reduce_sum(emb ** 2)
        grad = tape.gradient(loss, x)
        assert grad is not None and grad.shape == x.shape
        assert float(tf.reduce_max(tf.abs(grad))) > 0
        np.testing.assert_allclose(emb.numpy(), matcher.embed(pixels), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("input_range, expected", [
    ("minus1_1", [51 / 127.5 - 1, -1.0, 1.0]),     # [-0.6, -1, 1]
    ("zero_1", [0.2, 0.0, 1.0]),
    ("raw", [51.0, 0.0, 255.0]),
    ("arcface", [-0.59765625, -0.99609375, 0.99609375]),  # (x - 127.5) / 128
])
def test_keras_input_ranges_on_a_constant_image(input_range, expected):
    inp = keras.Input((4, 4, 3))
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(inp))  # channel means
    matcher = KerasMatcher(model, input_range=input_range)
    image = np.zeros((1, 4, 4, 3), np.uint8) + np.array([51, 0, 255], np.uint8)
    np.testing.assert_allclose(matcher.embed(image)[0], expected, rtol=1e-6, atol=1e-6)
    unit = tf.constant(image.astype(np.float32) / 127.5 - 1.0)
    np.testing.assert_allclose(matcher.tf_embed(unit).numpy()[0], expected, rtol=1e-5, atol=1e-5)


def test_keras_store_key(keras_models, tmp_path):
    root, models = keras_models
    k1 = KerasMatcher(str(root / "m1.keras")).store_key
    assert SAFE_KEY.match(k1) and k1.startswith("keras-")
    assert KerasMatcher(str(root / "m1.keras")).store_key == k1
    assert KerasMatcher(str(root / "m2.keras")).store_key != k1
    assert KerasMatcher(str(root / "m1.keras"), input_range="zero_1").store_key != k1
    s1 = KerasMatcher(str(root / "sm1")).store_key
    assert SAFE_KEY.match(s1) and s1 == KerasMatcher(str(root / "sm1")).store_key
    assert s1 not in (k1, KerasMatcher(str(root / "sm2")).store_key)
    # the same saved_model.pb with another model's variables is another model
    mixed = tmp_path / "mixed"
    shutil.copytree(root / "sm1", mixed)
    shutil.rmtree(mixed / "variables")
    shutil.copytree(root / "sm2" / "variables", mixed / "variables")
    other = KerasMatcher(str(mixed))
    images = _pixels((2, 16, 16, 3))
    np.testing.assert_allclose(other.embed(images), KerasMatcher(str(root / "sm2")).embed(images),
                               rtol=1e-5, atol=1e-5)
    assert other.store_key != s1
    # in-memory models: keyed by their weights
    assert KerasMatcher(models[1]).store_key == KerasMatcher(models[1]).store_key
    assert KerasMatcher(models[1]).store_key != KerasMatcher(models[2]).store_key


def test_keras_several_outputs():
    inp = keras.Input((4, 4, 3))
    flat = keras.layers.Flatten()(inp)
    model = keras.Model(inp, [keras.layers.Dense(4, name="a")(flat),
                              keras.layers.Dense(6, name="b")(flat)])
    with pytest.raises(MatcherError, match="2 outputs"):
        KerasMatcher(model)
    with pytest.raises(MatcherError, match="'zzz'"):
        KerasMatcher(model, output="zzz")
    images = _pixels((3, 4, 4, 3))
    a, b = model(images.astype(np.float32) / 127.5 - 1.0)
    np.testing.assert_allclose(KerasMatcher(model, output="a").embed(images), a.numpy(), atol=1e-5)
    np.testing.assert_allclose(KerasMatcher(model, output=1).embed(images), b.numpy(), atol=1e-5)
    assert KerasMatcher(model, output="b").store_key != KerasMatcher(model, output="a").store_key
    # a concrete function returning a dict (what a SavedModel signature looks like)
    fn = tf.function(lambda x: {"a": tf.reshape(x, [-1, 48]), "b": tf.reduce_mean(x, [1, 2])})
    concrete = fn.get_concrete_function(tf.TensorSpec([None, 4, 4, 3], tf.float32))
    with pytest.raises(MatcherError, match="outputs"):
        KerasMatcher(concrete)
    pick = KerasMatcher(concrete, output="b", input_range="raw")
    assert pick.embedding_dim == 3
    np.testing.assert_allclose(pick.embed(images), images.mean(axis=(1, 2)), rtol=1e-5)


def test_keras_unknown_spatial_dims_need_input_shape():
    inp = keras.Input((None, None, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))
    model = keras.Model(inp, keras.layers.Dense(5)(x))
    with pytest.raises(MatcherError, match="input_shape"):
        KerasMatcher(model)
    with pytest.raises(MatcherError, match="does not fit"):
        KerasMatcher(model, input_shape=(12, 12, 1))
    matcher = KerasMatcher(model, input_shape=(12, 10, 3))
    assert matcher.input_shape == (12, 10, 3)
    assert matcher.embed(_pixels((2, 12, 10, 3))).shape == (2, 5)


def test_keras_bad_paths(tmp_path):
    with pytest.raises(MatcherError, match="no such"):
        KerasMatcher(str(tmp_path / "missing.keras"))
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a keras file")
    with pytest.raises(MatcherError, match="junk.keras"):
        KerasMatcher(str(junk))
    with pytest.raises(MatcherError, match="input_range"):
        KerasMatcher(_tiny_model(0), input_range="0_255")


# ------------------------------------------------------------------------------------------------
# ONNX
# ------------------------------------------------------------------------------------------------
def _onnx(path, in_shape, graph, weight, out_shape=("N", 5)):
    """Saves a tiny ONNX model: [Transpose ->] Flatten | GlobalAveragePool+Flatten -> MatMul."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, x = [], "x"
    if graph == "transpose":  # NHWC input, NCHW inside
        nodes.append(helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]))
        x = "xt"
    if graph == "gap":
        nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
        x = "pooled"
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    nodes.append(helper.make_node("MatMul", ["flat", "w"], ["y"]))
    model = helper.make_model(
        helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                        list(in_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
                          initializer=[numpy_helper.from_array(weight.astype(np.float32), "w")]),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _reference(images, weight, layout, mean=127.5, std=127.5, bgr=False, pool=False):
    x = images.astype(np.float64)
    if bgr:
        x = x[..., ::-1]
    x = (x - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    if pool:
        x = x.mean(axis=(1, 2))
    elif layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    return x.reshape(len(x), -1) @ weight


@pytest.fixture
def weights():
    rng = np.random.default_rng(7)
    return {k: rng.standard_normal(s) for k, s in
            {"w": (192, 5), "w2": (192, 5), "w3": (3, 5), "w4": (36, 5)}.items()}


def test_onnx_nchw_and_nhwc_match_numpy(tmp_path, weights):
    w = weights["w"]
    nchw = OnnxMatcher(_onnx(tmp_path / "nchw.onnx", ["N", 3, 8, 8], "flat", w))
    transposed = OnnxMatcher(_onnx(tmp_path / "t.onnx", ["N", 8, 8, 3], "transpose", w))
    nhwc = OnnxMatcher(_onnx(tmp_path / "nhwc.onnx", ["N", 8, 8, 3], "flat", weights["w2"]))
    assert (nchw.layout, transposed.layout, nhwc.layout) == ("nchw", "nhwc", "nhwc")
    assert nchw.input_shape == transposed.input_shape == nhwc.input_shape == (8, 8, 3)
    assert nchw.embedding_dim == 5 and not nchw.differentiable and nchw.name == "onnx"
    images = _pixels((37, 8, 8, 3))
    ref = _reference(images, w, "nchw")
    np.testing.assert_allclose(nchw.embed(images), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(transposed.embed(images), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(nhwc.embed(images), _reference(images, weights["w2"], "nhwc"),
                               rtol=1e-4, atol=1e-4)


def test_onnx_normalisation_and_bgr(tmp_path, weights):
    path = _onnx(tmp_path / "nchw.onnx", ["N", 3, 8, 8], "flat", weights["w"])
    images = _pixels((5, 8, 8, 3), seed=3)
    mean = (120.0, 127.5, 131.0)
    bgr = OnnxMatcher(path, mean=mean, std=128.0, channel_order="bgr")
    rgb = OnnxMatcher(path, mean=mean, std=128.0)
    np.testing.assert_allclose(bgr.embed(images),
                               _reference(images, weights["w"], "nchw", mean, 128.0, bgr=True),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rgb.embed(images),
                               _reference(images, weights["w"], "nchw", mean, 128.0),
                               rtol=1e-4, atol=1e-4)
    assert not np.allclose(bgr.embed(images), rgb.embed(images), atol=1e-2)
    with pytest.raises(MatcherError, match="mean has 2 values"):
        OnnxMatcher(path, mean=(1.0, 2.0))


def test_onnx_batching_and_fixed_batch_of_one(tmp_path, weights, monkeypatch):
    images = _pixels((5, 8, 8, 3), seed=4)
    ref = _reference(images, weights["w"], "nchw")
    for shape, batch_size, expected_feeds in ((["N", 3, 8, 8], 2, [2, 2, 1]),
                                              ([1, 3, 8, 8], 32, [1] * 5)):
        matcher = OnnxMatcher(_onnx(tmp_path / f"b{shape[0]}.onnx", shape, "flat", weights["w"],
                                    out_shape=(shape[0], 5)), batch_size=batch_size)
        feeds, run = [], matcher._session.run
        monkeypatch.setattr(matcher._session, "run",
                            lambda names, feed: feeds.append(len(feed["x"])) or run(names, feed))
        np.testing.assert_allclose(matcher.embed(images), ref, rtol=1e-4, atol=1e-4)
        assert feeds == expected_feeds


def test_onnx_symbolic_spatial_dims_need_input_size(tmp_path, weights):
    path = _onnx(tmp_path / "gap.onnx", ["N", 3, "H", "W"], "gap", weights["w3"],
                 out_shape=("N", "D"))
    with pytest.raises(MatcherError, match="input_size"):
        OnnxMatcher(path)
    matcher = OnnxMatcher(path, input_size=(6, 7))
    assert matcher.input_shape == (6, 7, 3) and matcher.embedding_dim == 5  # dim found by a run
    images = _pixels((4, 6, 7, 3), seed=5)
    np.testing.assert_allclose(matcher.embed(images),
                               _reference(images, weights["w3"], "nchw", pool=True),
                               rtol=1e-4, atol=1e-4)
    fixed = _onnx(tmp_path / "fixed.onnx", ["N", 3, 8, 8], "flat", weights["w"])
    with pytest.raises(MatcherError, match="fixes it at 8"):
        OnnxMatcher(fixed, input_size=(6, 8))


def test_onnx_ambiguous_layout_needs_the_flag(tmp_path, weights):
    path = _onnx(tmp_path / "amb.onnx", ["N", 3, 4, 3], "flat", weights["w4"])
    with pytest.raises(MatcherError, match="layout"):
        OnnxMatcher(path)
    nhwc = OnnxMatcher(path, layout="nhwc")
    assert nhwc.input_shape == (3, 4, 3)
    images = _pixels((3, 3, 4, 3), seed=6)
    np.testing.assert_allclose(nhwc.embed(images), _reference(images, weights["w4"], "nhwc"),
                               rtol=1e-4, atol=1e-4)
    assert OnnxMatcher(path, layout="NCHW").input_shape == (4, 3, 3)


def test_onnx_bad_files_are_matcher_errors(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not an onnx model")
    with pytest.raises(MatcherError, match=re.escape(str(junk))):
        OnnxMatcher(str(junk))
    with pytest.raises(MatcherError, match="no such ONNX model file"):
        OnnxMatcher(str(tmp_path / "missing.onnx"))


def test_onnx_without_onnxruntime_says_how_to_install(tmp_path, weights, monkeypatch):
    path = _onnx(tmp_path / "a.onnx", ["N", 3, 8, 8], "flat", weights["w"])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(MatcherError, match="pip install onnxruntime"):
        OnnxMatcher(path)


def test_onnx_store_key(tmp_path, weights):
    a = _onnx(tmp_path / "a.onnx", ["N", 3, 8, 8], "flat", weights["w"])
    b = _onnx(tmp_path / "b.onnx", ["N", 3, 8, 8], "flat", weights["w2"])
    key = OnnxMatcher(a).store_key
    assert SAFE_KEY.match(key) and key.startswith("onnx-")
    assert OnnxMatcher(a).store_key == key
    shutil.copy(a, tmp_path / "copy.onnx")  # the same bytes elsewhere: the same model
    assert OnnxMatcher(str(tmp_path / "copy.onnx")).store_key == key
    assert OnnxMatcher(b).store_key != key
    assert OnnxMatcher(a, std=128.0).store_key != key
    assert OnnxMatcher(a, channel_order="bgr").store_key != key


# ------------------------------------------------------------------------------------------------
# HTTP
# ------------------------------------------------------------------------------------------------
SHAPE = (4, 4, 3)
DIM = 5

from tests.support import server_embedding as _server_embedding  # noqa: E402


def _http(url, **kwargs):
    kwargs.setdefault("backoff", 0.01)
    return HttpMatcher(url, input_shape=SHAPE, embedding_dim=DIM, **kwargs)


def test_http_json_and_npy_give_the_known_embeddings(serve):
    images = _pixels((10, *SHAPE))
    expected = _server_embedding(images)
    results = {}
    for fmt in ("json", "npy"):
        url, log = serve()
        matcher = _http(url, format=fmt, batch_size=4)
        results[fmt] = matcher.embed(images)
        assert log == [4, 4, 2]  # ceil(10 / 4) requests
        assert matcher.queries_sent == 10 and matcher.requests_sent == 3
        np.testing.assert_allclose(results[fmt], expected, rtol=1e-6)
    np.testing.assert_array_equal(results["json"], results["npy"])
    assert matcher.name == "http" and not matcher.differentiable


def test_http_retries_transient_errors(serve):
    url, log = serve(lambda i: [503, 429][i] if i < 2 else "ok")
    matcher = _http(url, retries=3, backoff=0.1)
    images = _pixels((3, *SHAPE))
    start = time.monotonic()
    np.testing.assert_allclose(matcher.embed(images), _server_embedding(images), rtol=1e-6)
    assert time.monotonic() - start >= 0.1 + 0.2 - 0.01  # backoff * 2**k before retry k
    assert len(log) == 3 and matcher.requests_sent == 3


def test_http_gives_up_after_the_retries(serve):
    url, log = serve(lambda i: 500)
    matcher = _http(url, retries=2)
    with pytest.raises(MatcherError, match=r"failed after 3 attempts.*HTTP 500") as info:
        matcher.embed(_pixels((2, *SHAPE)))
    assert url in str(info.value)
    assert len(log) == 3


def test_http_client_error_is_not_retried(serve):
    url, log = serve(lambda i: 400)
    with pytest.raises(MatcherError, match="HTTP 400.*bad image size"):
        _http(url, retries=3).embed(_pixels((2, *SHAPE)))
    assert log == [2]


def test_http_timeout(serve):
    url, log = serve(lambda i: "sleep")
    matcher = _http(url, timeout=0.2, retries=1)
    start = time.monotonic()
    with pytest.raises(MatcherError, match="after 2 attempts.*timed out"):
        matcher.embed(_pixels((1, *SHAPE)))
    assert time.monotonic() - start < 1.5  # did not wait for the 2 s answers
    assert len(log) == 2


def test_http_connection_refused():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(MatcherError, match="failed after 2 attempts"):
        _http(f"http://127.0.0.1:{port}/", retries=1).embed(_pixels((1, *SHAPE)))


def test_http_query_budget(serve):
    url, log = serve()
    matcher = _http(url, batch_size=4, query_budget=10)
    with pytest.raises(MatcherError, match="0 of 10 images used, 10 left, and 12 more"):
        matcher.embed(_pixels((12, *SHAPE)))  # refused whole: no partial batches sent
    assert log == [] and matcher.queries_sent == 0
    matcher.embed(_pixels((8, *SHAPE)))
    with pytest.raises(MatcherError, match="8 of 10 images used, 2 left"):
        matcher.embed(_pixels((4, *SHAPE)))
    assert log == [4, 4] and matcher.queries_sent == 8
    matcher.embed(_pixels((2, *SHAPE)))  # exactly the budget
    with pytest.raises(MatcherError, match="budget"):
        matcher.embed(_pixels((1, *SHAPE)))
    assert log == [4, 4, 2] and matcher.queries_sent == 10
    # a retry sends the images again, so it counts too
    url, log = serve(lambda i: 503 if i == 0 else "ok")
    with pytest.raises(MatcherError, match="4 of 4 images used, 0 left"):
        _http(url, query_budget=4).embed(_pixels((4, *SHAPE)))
    assert log == [4]


@pytest.mark.parametrize("fmt, action, message", [
    ("json", "wrong_dim", r"shape \(3, 4\), expected \(3, 5\)"),
    ("npy", "wrong_dim", r"shape \(3, 4\), expected \(3, 5\)"),
    ("json", "wrong_rows", r"shape \(2, 5\), expected \(3, 5\)"),
    ("npy", "garbage", "not a npy embeddings answer"),
])
def test_http_bad_answers(serve, fmt, action, message):
    url, log = serve(lambda i: action)
    with pytest.raises(MatcherError, match=message):
        _http(url, format=fmt).embed(_pixels((3, *SHAPE)))
    assert log == [3]  # not retried


def test_http_with_feature_store_queries_each_image_once(serve, tmp_path):
    url, log = serve()
    images = _pixels((5, *SHAPE))
    batch = np.concatenate([images, images[:2]])
    first = _http(url, batch_size=2)
    f1 = FeatureStore(str(tmp_path), first, key=first.store_key).features(batch)
    assert sum(log) == 5 and first.queries_sent == 5
    second = _http(url, batch_size=2)
    store = FeatureStore(str(tmp_path), second, key=second.store_key)
    f2 = store.features(batch[::-1])
    assert sum(log) == 5 and second.queries_sent == 0 and store.total_queries == 5
    np.testing.assert_allclose(f1, _server_embedding(batch), rtol=1e-6)
    np.testing.assert_array_equal(f2, f1[::-1])
    assert os.path.isdir(tmp_path / first.store_key)


def test_http_store_key_and_arguments():
    key = _http("http://127.0.0.1:1/embed").store_key
    assert SAFE_KEY.match(key) and key.startswith("http-")
    assert _http("http://127.0.0.1:1/embed").store_key == key
    assert _http("http://127.0.0.1:1/other").store_key != key
    with pytest.raises(TypeError):
        HttpMatcher("http://127.0.0.1:1/", input_shape=SHAPE)  # embedding_dim is required
    with pytest.raises(MatcherError, match="not an http"):
        _http("ftp://example.org/")
    with pytest.raises(MatcherError, match="format"):
        _http("http://127.0.0.1:1/", format="xml")


# ------------------------------------------------------------------------------------------------
# HTTP: answers kept per request, every image sent counted, budget across processes, secrets
# ------------------------------------------------------------------------------------------------
def _queries(store):
    with open(os.path.join(store.dir, "queries.json")) as handle:
        return json.load(handle)


def _http_warnings(monkeypatch):
    import dibigan_tf.matchers.http as http_module
    seen = []
    monkeypatch.setattr(http_module.logging, "warning", lambda msg, *a: seen.append(msg % a))
    return seen


@pytest.mark.parametrize("failure", [400, "nan"])
def test_http_store_keeps_every_answered_request(serve, tmp_path, failure):
    """A request that fails (an error status, or an answer with a NaN row) loses only its own
    images: the requests answered before it are stored, and queries.json counts every image
    sent, the failed request's too, next to the images answered."""
    url, log = serve(lambda i: failure if i == 3 else "ok")
    images = _pixels((20, *SHAPE))
    matcher = _http(url, batch_size=4)
    store = FeatureStore(str(tmp_path), matcher)        # chunk_size 1000, requests of 4
    with pytest.raises(MatcherError):
        store.features(images)
    assert log == [4, 4, 4, 4]
    assert _queries(store)["queries"] == 16 and _queries(store)["answered"] == 12
    again = FeatureStore(str(tmp_path), _http(url, batch_size=4))
    assert len(again) == 12
    url2, log2 = serve()
    resumed = FeatureStore(str(tmp_path), _http(url2, batch_size=4), key=matcher.store_key)
    np.testing.assert_allclose(resumed.features(images), _server_embedding(images), rtol=1e-6)
    assert log2 == [4, 4]                                # only the 8 unanswered images
    assert _queries(resumed)["queries"] == 24 and _queries(resumed)["answered"] == 20


def test_http_retries_are_counted_and_logged(serve, tmp_path, monkeypatch):
    url, log = serve(lambda i: 503 if i == 1 else "ok")
    warnings = _http_warnings(monkeypatch)
    store = FeatureStore(str(tmp_path), _http(url, batch_size=4, retries=2))
    store.features(_pixels((8, *SHAPE)))
    assert log == [4, 4, 4]
    assert _queries(store) == {"queries": 12, "answered": 8, "retried": 4, "matcher": "http"}
    assert store.total_queries == 12 and store.session_queries == 12
    assert len(warnings) == 1 and "attempt 1 of 3 failed (HTTP 503" in warnings[0]
    assert "retrying 4 images" in warnings[0]


def test_http_query_budget_holds_across_processes(serve, tmp_path):
    """Each "process" is a new matcher and a new store on the same folder: the budget counts
    what the earlier ones sent (queries.json), retries included."""
    url, log = serve(lambda i: 503 if i == 0 else "ok")
    first = FeatureStore(str(tmp_path), _http(url, batch_size=4, query_budget=10))
    first.features(_pixels((4, *SHAPE), seed=1))           # one retry: 8 images sent
    assert log == [4, 4] and first.total_queries == 8
    second = FeatureStore(str(tmp_path), _http(url, batch_size=4, query_budget=10))
    with pytest.raises(MatcherError, match=r"8 of 10 images used \(8 by earlier runs\), 2 left"):
        second.features(_pixels((4, *SHAPE), seed=2))
    assert log == [4, 4]                                   # nothing sent
    second.features(_pixels((2, *SHAPE), seed=3))          # exactly the budget
    third = FeatureStore(str(tmp_path), _http(url, batch_size=4, query_budget=10))
    with pytest.raises(MatcherError, match="10 of 10 images used"):
        third.features(_pixels((1, *SHAPE), seed=4))
    assert sum(log) == 10


def test_http_header_secret_from_env_or_file_never_shown(serve, tmp_path, monkeypatch):
    from dibigan_tf.matchers.http import resolve_headers
    secret = "s3cr3t-Key-0123456789"
    monkeypatch.setenv("TEST_MATCHER_KEY", secret)
    (tmp_path / "key.txt").write_text(secret + "\n")
    for spec in ("X-Api-Key:env:TEST_MATCHER_KEY", f"X-Api-Key:file:{tmp_path / 'key.txt'}"):
        url, log = serve(lambda i: 503 if i == 0 else 400)
        warnings = _http_warnings(monkeypatch)
        matcher = _http(url, retries=1, headers=resolve_headers([spec]))
        with pytest.raises(MatcherError) as info:
            matcher.embed(_pixels((2, *SHAPE)))
        srv_seen = log and True
        assert srv_seen
        # the server got the key; the error (whose body echoes it), the retry log and the
        # matcher's repr do not show it
        assert secret not in str(info.value) and "***" in str(info.value)
        assert warnings and all(secret not in w for w in warnings)
        assert secret not in repr(matcher) and "X-Api-Key" in repr(matcher)
        # the store key is the URL's alone: another key (or none) keeps the stored answers
        assert matcher.store_key == _http(url).store_key
    for bad, message in ((["X-Api-Key:" + secret], "expected Name:env:VAR"),
                         (["X-Api-Key:env:NOT_SET_ANYWHERE_42"], "NOT_SET_ANYWHERE_42 is not set"),
                         ([f"X-Api-Key:file:{tmp_path / 'missing'}"], "cannot read it")):
        with pytest.raises(MatcherError, match=message) as info:
            resolve_headers(bad)
        assert secret not in str(info.value)


def test_http_header_reaches_the_server(serve, monkeypatch):
    from dibigan_tf.matchers.http import resolve_headers
    monkeypatch.setenv("TEST_MATCHER_KEY", "abc123")
    url, log = serve(require_key="abc123")
    _http(url, headers=resolve_headers(["X-Api-Key:env:TEST_MATCHER_KEY"])).embed(
        _pixels((1, *SHAPE)))
    with pytest.raises(MatcherError, match="HTTP 401"):
        _http(url).embed(_pixels((1, *SHAPE)))
    assert log == [1, 1]


def test_http_credentials_in_the_url_are_refused_and_redacted():
    from dibigan_tf.matchers.http import redact_url
    for url in ("http://user:hunter2pass@127.0.0.1:1/embed",
                "http://127.0.0.1:1/embed?api_key=hunter2pass",
                "https://127.0.0.1:1/embed?model=a&access_token=hunter2pass"):
        with pytest.raises(MatcherError, match="--matcher_header") as info:
            _http(url)
        assert "hunter2pass" not in str(info.value) and "***" in str(info.value)
        assert "hunter2pass" not in redact_url(url)
    _http("http://127.0.0.1:1/embed?model=arcface")          # an ordinary parameter is fine
