"""dlib's ResNet face descriptor rebuilt as a Keras model from dlib's own weight file, behind the
matcher interface (`--matcher=dlib_keras`): the same function as `--matcher=dlib
--dlib_chip=aligned`, but differentiable (whitebox mode on real faces) and faster than dlib's
`compute_face_descriptor` (5-11x on this project's loaded 2-core CPU, `make bench`).

The weights are read from `dlib_face_recognition_resnet_model_v1.dat` (the PyPI package
`face_recognition_models`) by `dlib_dat.read_dlib_network`, with numpy; dlib itself is not needed.
Where dlib's conventions differ from Keras's, the model follows dlib's:

- input: RGB pixels p (0..255) become (p - mean_c) / 256 with the input layer's own channel means
  (read from the file, about 122.8, 117.0, 104.3), not p / 127.5 - 1, and not BGR;
- convolutions pad k/2 on every side at stride 1 and not at all at stride 2 (150 -> 72 after the
  7x7/2 stem), pooling never pads;
- a down-sampling residual block adds two tensors of different shapes (its 3x3/2 branch and the
  2x2/2 average of its input; 3x3 against 4x4 and 256 against 128 maps at level 1): dlib pads the
  smaller one with zeros at the END of every axis (bottom rows, right columns, high channels),
  which `EndPadAdd` does (padding at the start or cropping changes pairwise distances by up to
  0.69);
- `affine_` is batch normalisation folded into a per-channel scale and shift, kept as its own
  layer after each convolution (as dlib computes it, so rounding follows dlib's order);
- the descriptor is the fc layer's raw output, 128-D and not normalised (dlib compares faces by
  Euclidean distance, same person below 0.6).

Measured against dlib on real face chips (tests/matchers/test_dlib_keras.py; docs/dlib-keras.md:
3,427 LFW chips): components agree to 5.4e-7, cosines to 1 - 2.4e-7, and verification decisions
are the same.

Feature store: this matcher keeps its own store folder (`store_key` "dlibkeras-..."), never
dlib's, although both compute the same function. See `DlibKerasMatcher.store_key`.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from dibigan_tf.data.base import file_sha1
from dibigan_tf.keras_compat import keras
from dibigan_tf.matchers.base import FixedMatcher, MatcherError
from dibigan_tf.matchers.dlib_dat import CHIP_SIZE, TAP_NAMES, DlibNetwork, read_dlib_network
from dibigan_tf.matchers.dlib_matcher import _resize


def descriptor_path() -> str:
    """The path of dlib's face descriptor weights in `face_recognition_models`."""
    try:
        import face_recognition_models
    except ImportError as error:
        raise MatcherError(f"the dlib_keras matcher reads its weights from the package "
                           f"face_recognition_models ({error}); install it with "
                           f"`pip install -e '.[faces]'`") from None
    return face_recognition_models.face_recognition_model_location()


class EndPadAdd(keras.layers.Layer):
    """dlib's add_prev: the sum of two NHWC tensors whose height, width or channels may differ,
    the smaller zero-padded at the end of each axis (output: the larger of each dimension)."""

    def call(self, inputs):
        a, b = inputs
        dims = [max(int(a.shape[i]), int(b.shape[i])) for i in (1, 2, 3)]

        def pad(t):
            extra = [d - int(t.shape[i + 1]) for i, d in enumerate(dims)]
            if not any(extra):
                return t
            return tf.pad(t, [[0, 0]] + [[0, e] for e in extra])
        return pad(a) + pad(b)


class ChannelAffine(keras.layers.Layer):
    """dlib's affine_ in convolution mode: x * gamma_c + beta_c per channel."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)

    def build(self, input_shape):
        self.gamma = self.add_weight(name="gamma", shape=(self.channels,), trainable=False,
                                     initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(self.channels,), trainable=False,
                                    initializer="zeros")
        super().build(input_shape)

    def call(self, x):
        return x * self.gamma + self.beta

    def get_config(self):
        return dict(super().get_config(), channels=self.channels)


class DlibInput(keras.layers.Layer):
    """dlib's input_rgb_image_sized: RGB pixels 0..255 -> (p - mean_c) / 256."""

    def __init__(self, means, **kwargs):
        super().__init__(**kwargs)
        self.means = [float(m) for m in means]

    def call(self, x):
        return (x - tf.constant(self.means, x.dtype)) * (1.0 / 256.0)

    def get_config(self):
        return dict(super().get_config(), means=self.means)


def build_keras_model(net: DlibNetwork, name: str = "dlib_face_resnet") -> keras.Model:
    """The Keras model of a network read by `read_dlib_network`: float RGB pixels (0..255)
    [n, 150, 150, 3] in; [level4_32, level3_64, level2_128, level1_256, level0_256, descriptor]
    out (the output of each residual level, input side first, then the 128-D descriptor). Every
    weight is frozen (trainable False)."""
    inputs = keras.Input((net.chip_size, net.chip_size, 3), name="pixels")
    x = DlibInput(net.means, name="input_mean_256")(inputs)
    tagged, taps, assign = {}, {}, []
    counts = {}

    def unique(kind):
        counts[kind] = counts.get(kind, 0) + 1
        return f"{kind}_{counts[kind]}"

    for layer in reversed(net.layers):
        kind, args, values = layer.kind, layer.args, layer.values
        if kind == "tag":
            tagged[args["tag"]] = x
            continue
        if kind == "skip":
            x = tagged[args["tag"]]
            continue
        if kind == "con":
            pad, size, stride = values["padding"], args["size"], values["stride"]
            # k/2 on every side at stride 1 (odd k) is exactly Keras's "same"; anything else
            # is padded explicitly (the file's stride-2 convolutions: 0)
            same = stride == 1 and size % 2 == 1 and pad == size // 2
            if pad and not same:
                x = keras.layers.ZeroPadding2D(pad, name=unique("pad"))(x)
            conv = keras.layers.Conv2D(args["filters"], size, strides=stride,
                                       padding="same" if same else "valid", name=unique("con"))
            x = conv(x)
            # dlib: [out, in, rows, cols] -> Keras: [rows, cols, in, out]
            assign.append((conv, [values["filters"].transpose(2, 3, 1, 0), values["biases"]]))
        elif kind == "affine":
            affine = ChannelAffine(len(values["gamma"]), name=unique("affine"))
            x = affine(x)
            assign.append((affine, [values["gamma"], values["beta"]]))
        elif kind == "relu":
            x = keras.layers.ReLU(name=unique("relu"))(x)
        elif kind == "add_prev":
            x = EndPadAdd(name=unique("add_prev"))([x, tagged[args["tag"]]])
        elif kind == "max_pool":
            x = keras.layers.MaxPooling2D(values["window"], values["stride"], padding="valid",
                                          name=unique("max_pool"))(x)
        elif kind == "avg_pool":
            if values["window"] == 0:   # avg_pool_everything
                x = keras.layers.GlobalAveragePooling2D(name="avg_pool_everything")(x)
            else:
                x = keras.layers.AveragePooling2D(values["window"], values["stride"],
                                                  padding="valid", name=unique("avg_pool"))(x)
        elif kind == "fc":
            dense = keras.layers.Dense(args["outputs"], use_bias=False, name="fc_descriptor")
            x = dense(x)
            assign.append((dense, [values["weights"]]))
        else:  # pragma: no cover - dlib_dat.ARCHITECTURE has no other kinds
            raise AssertionError(kind)
        if "tap" in args:
            taps[args["tap"]] = x
    model = keras.Model(inputs, [taps[t] for t in TAP_NAMES] + [x], name=name)
    for layer, weights in assign:
        layer.set_weights([np.asarray(w, np.float32) for w in weights])
    model.trainable = False
    return model


_MODELS = {}


def load_descriptor_model(path: str | None = None):
    """(DlibNetwork, Keras model) of dlib's descriptor file (default: face_recognition_models'),
    read and built once per process and file version."""
    path = os.path.abspath(path or descriptor_path())
    try:
        stat = os.stat(path)
    except OSError as error:
        raise MatcherError(f"{path}: cannot read: {error.strerror or error}") from None
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _MODELS:
        net = read_dlib_network(path)
        _MODELS[key] = (net, build_keras_model(net))
    return _MODELS[key]




class DlibKerasMatcher(FixedMatcher):
    """dlib's face descriptor as a differentiable Keras matcher.

    Input contract: that of `DlibMatcher(chip="aligned")`: uint8 dlib face chips of
    `image_size` (the aligned crops' size); chips of another size than 150 are resized to 150
    with the same Pillow bicubic resize as DlibMatcher, so both answer the same images alike.
    `tf_embed` / `tf_outputs` take float images in [-1, 1] at `image_size` and resize inside
    the graph (bicubic, antialiased when shrinking) when that is not 150.
    """
    name = "dlib_keras"
    differentiable = True

    def __init__(self, image_size: int = CHIP_SIZE, chip: str = "aligned", num_jitters: int = 0,
                 batch_size: int = 32, path: str | None = None):
        if chip != "aligned":
            raise MatcherError(f"dlib_keras takes aligned dlib face chips only (--dlib_chip="
                               f"aligned); dlib's landmark + chip step ({chip!r}) is not part "
                               f"of the network")
        if num_jitters:
            raise MatcherError("dlib_keras computes dlib's plain descriptor; --dlib_jitters "
                               "(dlib's average over jittered copies) is not available")
        if image_size < 16:
            raise MatcherError(f"dlib_keras: image_size {image_size} is too small for a face")
        self.network, self._model = load_descriptor_model(path)
        self.path = self.network.path
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self._input_shape = (self.image_size, self.image_size, 3)
        self._dim = int(self._model.outputs[-1].shape[-1])
        self._key = f"dlibkeras-{file_sha1(self.path)[:8]}-aligned-{self.image_size}"
        self._embed_fn = tf.function(
            lambda chips: self._model(tf.cast(chips, tf.float32), training=False)[-1],
            input_signature=[tf.TensorSpec([None, CHIP_SIZE, CHIP_SIZE, 3], tf.uint8)])

    @property
    def store_key(self) -> str:
        """"dlibkeras-<file sha1>-aligned-<size>": a folder of its own, never dlib's.

        The two agree to 5.4e-7 per component on every chip measured, so sharing would save the
        queries of a whitebox run on images a blackbox run already sent to dlib. It is not done,
        because a store must hold the answers of one function: (1) the equivalence is measured
        on a few thousand chips, not proven for every input (the images a generator draws are
        not face photos), and a store mixing both would make an answer depend on which matcher
        happened to see the image first, so two runs from the same store could disagree; (2)
        `queries.json` counts the queries sent to the blackbox, the paper's query budget, and
        calls to a local whitebox copy must not be counted as, or hidden among, dlib's; (3) a
        different TensorFlow build or device (oneDNN, a GPU's TF32) changes the Keras answers
        by more than dlib's own rounding. Recomputing is cheap: the Keras model described 3,427
        LFW chips in 142 s on a loaded 2-core machine (dlib: 1,141 s).
        """
        return self._key

    def chips(self, images: np.ndarray) -> np.ndarray:
        """The 150x150 chips the network sees (DlibMatcher's resize for aligned chips)."""
        return np.stack([_resize(np.ascontiguousarray(image), CHIP_SIZE) for image in images])

    def _embed(self, images):
        if len(images) == 0:
            return np.zeros((0, self._dim), np.float32)
        parts = []
        for start in range(0, len(images), self.batch_size):
            chips = self.chips(images[start:start + self.batch_size])
            parts.append(self._embed_fn(tf.constant(chips)).numpy())
        return np.concatenate(parts)

    def _pixels(self, images):
        """Float images in [-1, 1] at image_size -> float pixels 0..255 at 150x150."""
        x = (tf.convert_to_tensor(images, tf.float32) + 1.0) * 127.5
        if int(x.shape[1]) != CHIP_SIZE or int(x.shape[2]) != CHIP_SIZE:
            x = tf.image.resize(x, (CHIP_SIZE, CHIP_SIZE), method="bicubic", antialias=True)
        return x

    def tf_outputs(self, images):
        """[level4_32, level3_64, level2_128, level1_256, level0_256, descriptor]: the output of
        each residual level (the taps F_j of Eq. 7) and the 128-D descriptor."""
        return list(self._model(self._pixels(images), training=False))

    def tf_embed(self, images):
        return self.tf_outputs(images)[-1]


def differentiable_reference(matcher):
    """A differentiable matcher computing the same function as `matcher`, or None: the matcher
    itself when it is differentiable; the Keras model of dlib's descriptor for dlib on aligned
    chips without jitter (the landmark step and jitter are not part of the network)."""
    if matcher.differentiable:
        return matcher
    from dibigan_tf.matchers.dlib_matcher import DlibMatcher
    if isinstance(matcher, DlibMatcher) and matcher.chip == "aligned" and not matcher.num_jitters:
        return DlibKerasMatcher(image_size=matcher.image_size,
                                path=getattr(matcher, "_descriptor_path", None))
    return None
