"""A whitebox matcher around any Keras model or TensorFlow SavedModel.

`KerasMatcher(model_or_path, input_range=...)` accepts

- a Keras 2 model (`dibigan_tf.keras_compat.keras`), or the path of one saved as `.keras` / `.h5`
  (loaded with `keras.models.load_model(path, compile=False)`);
- the path of a SavedModel directory (`tf.saved_model.save`, `model.export`), called through its
  `serving_default` signature, or, when it has none, through the loaded object itself;
- a concrete function, a `tf.function` with an input signature, or any other callable that takes
  one image batch (for those, give `input_shape` unless it can be read from a signature).

The model takes one float image batch [n, h, w, c] and returns the embeddings [n, d] (an output
with more dimensions is flattened per image). `input_range` says what pixel values it expects:

    "minus1_1"  x / 127.5 - 1          (this project's networks)
    "zero_1"    x / 255
    "raw"       x, floats 0..255       (also the only choice for a model with an integer input)
    "arcface"   (x - 127.5) / 128      (the insightface convention)

`embed` takes uint8 pixels; `tf_embed` takes float images in [-1, 1] (the generator's range) and
maps them to the model's range inside TensorFlow, so gradients reach the images.

`store_key` is "keras-<12 hex>-<8 hex>": the first part hashes the model (the file; for a
SavedModel directory its saved_model.pb and every file under variables/, since two models of the
same architecture can have the same saved_model.pb; for an in-memory model its layer configs and
weight values), the second the choices that change the features (input range and output).
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import tensorflow as tf

from dibigan_tf.keras_compat import keras
from dibigan_tf.matchers.base import FixedMatcher, MatcherError, first_line

#: model input = pixels * scale + offset (pixels: floats 0..255)
_FROM_PIXELS = {"minus1_1": (1.0 / 127.5, -1.0), "zero_1": (1.0 / 255.0, 0.0),
                "raw": (1.0, 0.0), "arcface": (1.0 / 128.0, -127.5 / 128.0)}
#: model input = u * scale + offset (u: floats in [-1, 1], i.e. pixels / 127.5 - 1)
_FROM_UNIT = {"minus1_1": (1.0, 0.0), "zero_1": (0.5, 0.5),
              "raw": (127.5, 127.5), "arcface": (127.5 / 128.0, 0.0)}




def _sha1_files(root: str, paths) -> str:
    digest = hashlib.sha1()
    for path in paths:
        digest.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _path_digest(path: str) -> str:
    if not os.path.isdir(path):
        return _sha1_files(os.path.dirname(path) or ".", [path])
    files = [os.path.join(path, "saved_model.pb")]
    for base, dirs, names in os.walk(os.path.join(path, "variables")):
        dirs.sort()
        files += [os.path.join(base, n) for n in sorted(names)]
    return _sha1_files(path, files)


def _object_digest(obj) -> str:
    """Hash of an in-memory model: its class, layer configs (without names) and weight values."""
    digest = hashlib.sha1(type(obj).__qualname__.encode())
    for layer in getattr(obj, "layers", None) or []:
        try:
            config = dict(layer.get_config())
        except Exception:  # layers without a config: their weights still count
            config = {}
        config.pop("name", None)
        digest.update(type(layer).__name__.encode())
        digest.update(json.dumps(config, sort_keys=True, default=repr).encode())
    for var in getattr(obj, "variables", None) or []:
        value = np.asarray(var.numpy())
        digest.update(repr((value.shape, value.dtype.str)).encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def _load(path: str):
    if not os.path.exists(path):
        raise MatcherError(f"{path}: no such model file or SavedModel directory")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise MatcherError(f"{path}: a directory without saved_model.pb is not a SavedModel")
        try:
            return tf.saved_model.load(path)
        except Exception as error:
            raise MatcherError(f"{path}: cannot load the SavedModel: "
                               f"{first_line(error)}") from None
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:
        raise MatcherError(f"{path}: cannot load the Keras model: {first_line(error)}") from None


def _as_list(shape):
    shape = tf.TensorShape(shape)
    return None if shape.rank is None else shape.as_list()


def _output_structure(outputs):
    """(kind, names, static shapes) of a function's outputs: a tensor, a dict or a sequence."""
    if isinstance(outputs, dict):
        names = sorted(outputs)
        return "dict", names, [getattr(outputs[n], "shape", None) for n in names]
    if isinstance(outputs, (list, tuple)):
        return "seq", [str(i) for i in range(len(outputs))], [getattr(o, "shape", None)
                                                             for o in outputs]
    return "single", ["0"], [getattr(outputs, "shape", None)]


def _choose(names, output, where):
    """Index into `names` of the output `output` (an index or a name) picks."""
    if len(names) == 1 and output in (None, 0, -1, names[0]):
        return 0
    if output is None:
        raise MatcherError(f"{where} has {len(names)} outputs {names}; choose the embedding "
                           f"with output=<index or name>")
    if isinstance(output, (int, np.integer)) and not isinstance(output, bool):
        if -len(names) <= output < len(names):
            return int(output) % len(names)
    elif isinstance(output, str) and output in names:
        return names.index(output)
    raise MatcherError(f"{where}: output={output!r} is neither one of its outputs {names} nor an "
                       f"index below {len(names)}")


class KerasMatcher(FixedMatcher):
    name = "keras"
    differentiable = True

    def __init__(self, model_or_path, *, input_range: str = "minus1_1", batch_size: int = 64,
                 output=None, input_shape=None):
        if input_range not in _FROM_PIXELS:
            raise MatcherError(f"keras matcher: input_range={input_range!r}, expected one of "
                               f"{sorted(_FROM_PIXELS)}")
        if int(batch_size) < 1:
            raise MatcherError(f"keras matcher: batch_size must be positive, got {batch_size}")
        self.input_range = input_range
        self._batch_size = int(batch_size)
        self.path = None
        source = model_or_path
        if isinstance(source, (str, os.PathLike)):
            self.path = os.fspath(source)
            source = _load(self.path)
        where = self.path or type(source).__name__
        self._source = source  # keeps a loaded SavedModel (and its variables) alive
        self._resolve(source, output, where)

        spec = self._spec_shape
        if spec is None or len(spec) != 4:
            raise MatcherError(f"{where}: expects an input of shape {spec}; a matcher needs one "
                               f"image batch [n, h, w, c]")
        shape = list(spec[1:])
        if input_shape is not None:
            given = [int(d) for d in input_shape]
            if len(given) != 3 or any(k is not None and k != g for k, g in zip(shape, given)):
                raise MatcherError(f"{where}: input_shape={tuple(given)} does not fit the model's "
                                   f"input {tuple(shape)}")
            shape = given
        if any(d is None for d in shape):
            raise MatcherError(f"{where}: the model's input has unknown dims {tuple(shape)} "
                               f"(h, w, c); give input_shape=(h, w, c)")
        self._input_shape = tuple(int(d) for d in shape)
        self._fixed_batch = spec[0]
        if self._fixed_batch is not None:
            self._batch_size = int(self._fixed_batch)
        if not self._in_dtype.is_floating:
            if input_range != "raw":
                raise MatcherError(f"{where}: takes {self._in_dtype.name} input, so input_range "
                                   f"must be 'raw', not {input_range!r}")
            self.differentiable = False

        self._embed_fn = tf.function(
            self._embed_pixels, reduce_retracing=True,
            input_signature=[tf.TensorSpec([self._fixed_batch, *self._input_shape], tf.uint8)])
        out_shape = _as_list(self._out_shape) if self._out_shape is not None else None
        if out_shape and all(d is not None for d in out_shape[1:]):
            self._dim = int(np.prod(out_shape[1:], dtype=np.int64))
        else:  # unknown statically: one local forward pass on a black image tells
            self._dim = int(self._run(np.zeros((1, *self._input_shape), np.uint8)).shape[1])
        self._key = "keras-{}-{}".format(
            (_path_digest(self.path) if self.path else _object_digest(source))[:12],
            hashlib.sha1(f"{input_range}|{self.output_name}".encode()).hexdigest()[:8])

    @classmethod
    def load(cls, path, **kwargs) -> "KerasMatcher":
        """A matcher for the Keras file or SavedModel directory at `path`."""
        return cls(os.fspath(path), **kwargs)

    # -- finding the input, the output and how to call the model ----------------------------
    def _resolve(self, source, output, where):
        if isinstance(source, keras.Model) and source.outputs is not None:
            if len(source.inputs) != 1:
                raise MatcherError(f"{where}: has {len(source.inputs)} inputs; a matcher model "
                                   f"takes one image batch")
            names = list(source.output_names)
            index = _choose(names, output, where)
            model = source if len(names) == 1 else keras.Model(source.inputs,
                                                               source.outputs[index])
            self._call = lambda x: model(x, training=False)
            self._spec_shape = _as_list(source.inputs[0].shape)
            self._in_dtype = tf.as_dtype(source.inputs[0].dtype)
            self._out_kind, self._out_key, self._out_shape = "single", None, model.outputs[0].shape
            self.output_name = names[index]
            return
        function = None
        signatures = getattr(source, "signatures", None)
        if signatures is not None and "serving_default" in signatures:
            function = signatures["serving_default"]
        elif isinstance(source, tf.types.experimental.ConcreteFunction):
            function = source
        elif getattr(source, "input_signature", None) is not None:
            function = source.get_concrete_function()
        else:  # a restored tf.function with one traced signature (a SavedModel's __call__)
            traced = getattr(getattr(source, "__call__", None), "concrete_functions", None)
            if traced is not None and len(traced) == 1:
                function = traced[0]
        if function is not None:
            args, kwargs = function.structured_input_signature
            specs = [(None, s) for s in args if isinstance(s, tf.TensorSpec)]
            specs += [(k, s) for k, s in sorted(kwargs.items()) if isinstance(s, tf.TensorSpec)]
            if len(specs) != 1:
                raise MatcherError(f"{where}: its signature takes {len(specs)} tensors "
                                   f"{[k for k, _ in specs]}; a matcher model takes one image "
                                   f"batch")
            arg, spec = specs[0]
            self._call = ((lambda x: function(x)) if arg is None else
                          (lambda x: function(**{arg: x})))
            self._spec_shape, self._in_dtype = _as_list(spec.shape), spec.dtype
            structure = function.structured_outputs
        elif callable(source):
            self._call = source
            self._spec_shape, self._in_dtype = [None, None, None, None], tf.float32
            structure = None  # known after the first call: see _probe_structure
        else:
            raise MatcherError(f"{where}: a {type(source).__name__} is not a Keras model, a "
                               f"SavedModel or a callable")
        self._output_request, self._where = output, where
        if structure is None:
            self._out_kind = None
            self._out_shape = None
            self.output_name = None if output is None else str(output)
        else:
            self._set_structure(structure)

    def _set_structure(self, structure):
        kind, names, shapes = _output_structure(structure)
        index = _choose(names, self._output_request, self._where)
        self._out_kind = kind
        self._out_key = names[index] if kind == "dict" else index
        self._out_shape = shapes[index]
        self.output_name = names[index]

    def _pick(self, outputs):
        if self._out_kind is None:  # a plain callable, seen for the first time
            self._set_structure(outputs)
        if self._out_kind == "single":
            if isinstance(outputs, (dict, list, tuple)):
                raise MatcherError(f"{self._where}: returned a {type(outputs).__name__}, "
                                   f"expected one tensor")
            return outputs
        return outputs[self._out_key]

    # -- the forward passes ------------------------------------------------------------------
    def _forward(self, x):
        """Model input (already in the model's range) -> embeddings [n, d] float32."""
        if self._in_dtype != x.dtype:
            if not self._in_dtype.is_floating:
                x = tf.round(x)
            x = tf.cast(x, self._in_dtype)
        out = tf.cast(self._pick(self._call(x)), tf.float32)
        return tf.reshape(out, [tf.shape(out)[0], -1])

    def _embed_pixels(self, pixels):
        scale, offset = _FROM_PIXELS[self.input_range]
        return self._forward(tf.cast(pixels, tf.float32) * scale + offset)

    def _run(self, images):
        if self._out_kind is None:  # a plain callable: learn its outputs eagerly, not in a trace
            self._embed_pixels(tf.constant(images[:1]))
        return self._embed_fn(tf.constant(images)).numpy()

    def _embed(self, images):
        if len(images) == 0:
            return np.zeros((0, self._dim), np.float32)
        parts = []
        for start in range(0, len(images), self._batch_size):
            chunk = images[start:start + self._batch_size]
            n = len(chunk)
            if self._fixed_batch is not None and n < self._fixed_batch:  # pad a short last batch
                chunk = np.concatenate([chunk, np.zeros((self._fixed_batch - n, *chunk.shape[1:]),
                                                        np.uint8)])
            parts.append(self._run(chunk)[:n])
        return np.concatenate(parts)

    def tf_embed(self, images):
        if not self.differentiable:
            return super().tf_embed(images)
        scale, offset = _FROM_UNIT[self.input_range]
        x = tf.convert_to_tensor(images, tf.float32)
        if (scale, offset) != (1.0, 0.0):
            x = x * scale + offset
        return self._forward(x)
