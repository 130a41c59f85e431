"""Opening the matcher F named by `--matcher` (every adapter except `lenet`, which the digits
pipeline trains itself)."""
from __future__ import annotations

from dibigan_tf.matchers.base import Matcher, MatcherError

#: every value `--matcher` accepts
MATCHERS = ("lenet", "keras", "savedmodel", "onnx", "dlib", "dlib_keras", "http")


def open_matcher(mc, image_shape) -> Matcher:
    """The matcher of a MatcherConfig `mc` (name, path, url, ...). `image_shape` (h, w, c) is the
    dataset's image shape, used where the matcher cannot say its own input size."""
    name = mc.name
    image_size, channels = int(image_shape[0]), int(image_shape[-1])
    if name == "dlib":
        from dibigan_tf.matchers.dlib_matcher import DlibMatcher
        return DlibMatcher(image_size=mc.input_size or image_size, chip=mc.chip,
                           num_jitters=mc.num_jitters)
    if name == "dlib_keras":
        # dlib's descriptor rebuilt in Keras from its weight file: dlib's input contract with
        # --dlib_chip=aligned, and differentiable (whitebox mode on faces)
        from dibigan_tf.matchers.dlib_keras import DlibKerasMatcher
        return DlibKerasMatcher(image_size=mc.input_size or image_size, chip=mc.chip,
                                num_jitters=mc.num_jitters)
    if name in ("keras", "savedmodel"):
        _need(mc.path, name, "--matcher_path (a .keras/.h5 file or a SavedModel directory)")
        from dibigan_tf.matchers.keras_model import KerasMatcher
        size = mc.input_size
        return KerasMatcher(mc.path, input_range=mc.input_range,
                            input_shape=(size, size, channels) if size else None)
    if name == "onnx":
        _need(mc.path, name, "--matcher_path (an .onnx file)")
        from dibigan_tf.matchers.onnx_model import OnnxMatcher
        size = mc.input_size or None
        return OnnxMatcher(mc.path, input_size=(size, size) if size else None,
                           layout=mc.layout or None, mean=mc.mean, std=mc.std,
                           channel_order=mc.channel_order)
    if name == "http":
        _need(mc.url, name, "--matcher_url")
        if not mc.embedding_dim:
            raise MatcherError("--matcher=http needs --matcher_embedding_dim (the length of the "
                               "vectors the service returns)")
        from dibigan_tf.matchers.http import HttpMatcher
        size = mc.input_size or image_size
        from dibigan_tf.matchers.http import resolve_headers
        return HttpMatcher(mc.url, input_shape=(size, size, channels),
                           embedding_dim=mc.embedding_dim,
                           format=mc.http_format, timeout=mc.timeout,
                           retries=mc.retries, query_budget=mc.query_budget,
                           headers=resolve_headers(mc.headers))
    if name == "lenet":
        raise MatcherError("the lenet matcher is trained by the digits pipeline, not opened")
    raise MatcherError(f"unknown matcher {name!r}; choose from {MATCHERS}")


def _need(value, name, what):
    if not value:
        raise MatcherError(f"--matcher={name} needs {what}")
