"""A blackbox matcher around an ONNX model (e.g. an insightface ArcFace), run with onnxruntime.

The model must take one 4-D image input and give the embedding as an output [n, d] (an output with
more dimensions is flattened per image). What the adapter reads from the model:

- the layout: an input whose dim 1 is 1 or 3 is NCHW, one whose last dim is 1 or 3 is NHWC;
  `layout="nchw"` / `"nhwc"` overrides (needed when both or neither fit);
- the image size: from the input's spatial dims, or `input_size=(h, w)` when they are symbolic;
- the batch size: a symbolic batch dim takes `batch_size` images per run, a fixed one takes that
  many (1: one image at a time; a short last batch is padded with black images);
- the embedding size: from the output's shape, or from one run on a black image if symbolic.

Preprocessing of the uint8 RGB pixels: RGB -> BGR if `channel_order="bgr"`, then
(x - mean) / std (scalars, or one value per channel in the order the model receives them). The
ArcFace / insightface convention is mean 127.5 with std 127.5 (or 128).

`store_key` is "onnx-<12 hex>-<8 hex>": the first part is the start of the SHA-1 of the model file
(what `sha1sum model.onnx` prints), the second hashes the preprocessing, which changes the features.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

from dibigan_tf.data.base import file_sha1
from dibigan_tf.matchers.base import FixedMatcher, MatcherError, first_line

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
           "tensor(double)": np.float64}




def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MatcherError("the ONNX matcher needs onnxruntime: pip install onnxruntime") from None
    return onnxruntime


def _known(dim) -> bool:
    return isinstance(dim, (int, np.integer)) and dim > 0




class OnnxMatcher(FixedMatcher):
    name = "onnx"
    differentiable = False

    def __init__(self, path, *, input_size=None, layout=None, mean=127.5, std=127.5,
                 channel_order: str = "rgb", batch_size: int = 32, output=None):
        path = os.fspath(path)
        self.path = path
        if not os.path.isfile(path):
            raise MatcherError(f"{path}: no such ONNX model file")
        channel_order = str(channel_order).lower()
        if channel_order not in ("rgb", "bgr"):
            raise MatcherError(f"{path}: channel_order={channel_order!r}, expected 'rgb' or 'bgr'")
        if layout is not None:
            layout = str(layout).lower()
            if layout not in ("nchw", "nhwc"):
                raise MatcherError(f"{path}: layout={layout!r}, expected 'nchw', 'nhwc' or None")
        if int(batch_size) < 1:
            raise MatcherError(f"{path}: batch_size must be positive, got {batch_size}")
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no warnings wall on load
        try:
            self._session = ort.InferenceSession(path, sess_options=options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as error:
            raise MatcherError(f"{path}: onnxruntime cannot read this model: "
                               f"{first_line(error)}") from None

        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise MatcherError(f"{path}: has {len(inputs)} inputs {[i.name for i in inputs]}; "
                               f"a matcher model takes one image batch")
        self._input_name = inputs[0].name
        shape = list(inputs[0].shape)
        if len(shape) != 4:
            raise MatcherError(f"{path}: input {self._input_name!r} has shape {shape}; a matcher "
                               f"model takes one 4-D image batch")
        if inputs[0].type not in _DTYPES:
            raise MatcherError(f"{path}: input {self._input_name!r} is {inputs[0].type}; "
                               f"supported: {sorted(_DTYPES)}")
        self._input_dtype = _DTYPES[inputs[0].type]
        if layout is None:
            nchw, nhwc = shape[1] in (1, 3), shape[3] in (1, 3)
            if nchw == nhwc:
                raise MatcherError(f"{path}: cannot tell the layout of input shape {shape} "
                                   f"({'both' if nchw else 'neither'} NCHW and NHWC fit); give "
                                   f"layout='nchw' or 'nhwc'")
            layout = "nchw" if nchw else "nhwc"
        self.layout = layout
        channels, height, width = (shape[1:] if layout == "nchw" else
                                   [shape[3], shape[1], shape[2]])
        if not _known(channels):
            raise MatcherError(f"{path}: the input's channel dim is {channels!r} in {shape} "
                               f"({layout}); the model must fix it")
        if input_size is not None:
            size = tuple(int(d) for d in input_size)
            if len(size) != 2 or min(size) < 1:
                raise MatcherError(f"{path}: input_size={input_size!r}, expected (height, width)")
            for dim, given, what in ((height, size[0], "height"), (width, size[1], "width")):
                if _known(dim) and dim != given:
                    raise MatcherError(f"{path}: input_size gives {what} {given}, but the model "
                                       f"fixes it at {dim}")
            height, width = size
        if not (_known(height) and _known(width)):
            raise MatcherError(f"{path}: the input's spatial dims are symbolic ({shape}, "
                               f"{layout}); give input_size=(height, width)")
        self._input_shape = (int(height), int(width), int(channels))
        self._fixed_batch = int(shape[0]) if _known(shape[0]) else None
        self._batch_size = self._fixed_batch or int(batch_size)

        self.channel_order = channel_order
        self._mean = self._per_channel(mean, "mean")
        self._std = self._per_channel(std, "std")
        if np.any(self._std == 0):
            raise MatcherError(f"{path}: std must not be zero, got {std!r}")

        outputs = self._session.get_outputs()
        names = [o.name for o in outputs]
        if len(names) == 1 and output in (None, 0, -1, names[0]):
            index = 0
        elif output is None:
            raise MatcherError(f"{path}: has {len(names)} outputs {names}; choose the embedding "
                               f"with output=<index or name>")
        elif isinstance(output, str) and output in names:
            index = names.index(output)
        elif (isinstance(output, (int, np.integer)) and not isinstance(output, bool)
              and -len(names) <= output < len(names)):
            index = int(output) % len(names)
        else:
            raise MatcherError(f"{path}: output={output!r} is neither one of its outputs {names} "
                               f"nor an index below {len(names)}")
        self.output_name = names[index]
        out_shape = list(outputs[index].shape or [])
        if len(out_shape) >= 2 and all(_known(d) for d in out_shape[1:]):
            self._dim = int(np.prod(out_shape[1:], dtype=np.int64))
        else:  # symbolic: one local run on a black image tells
            self._dim = int(self._run(np.zeros((1, *self._input_shape), np.uint8)).shape[1])

        preprocessing = repr((self.layout, self._input_shape, self._mean.tolist(),
                              self._std.tolist(), channel_order, self.output_name))
        self._key = "onnx-{}-{}".format(file_sha1(path)[:12],
                                        hashlib.sha1(preprocessing.encode()).hexdigest()[:8])

    def _per_channel(self, value, what):
        array = np.asarray(value, np.float32).reshape(-1)
        if array.size not in (1, self._input_shape[2]):
            raise MatcherError(f"{self.path}: {what} has {array.size} values; give one, or one "
                               f"per channel ({self._input_shape[2]})")
        return array

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB [n, h, w, c] -> the model's input array (order, normalisation, layout)."""
        x = images.astype(np.float32)
        if self.channel_order == "bgr":
            x = x[..., ::-1]
        x = (x - self._mean) / self._std
        if self.layout == "nchw":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=self._input_dtype)

    def _run(self, images):
        n = len(images)
        if self._fixed_batch is not None and n < self._fixed_batch:  # pad a short last batch
            images = np.concatenate([images, np.zeros((self._fixed_batch - n, *images.shape[1:]),
                                                      images.dtype)])
        try:
            feed = {self._input_name: self.preprocess(images)}
            out, = self._session.run([self.output_name], feed)
        except Exception as error:
            raise MatcherError(f"{self.path}: onnxruntime failed on a batch of {len(images)}: "
                               f"{first_line(error)}") from None
        return np.asarray(out)[:n].reshape(n, -1)

    def _embed(self, images):
        if len(images) == 0:
            return np.zeros((0, self._dim), np.float32)
        return np.concatenate([self._run(images[i:i + self._batch_size])
                               for i in range(0, len(images), self._batch_size)])
