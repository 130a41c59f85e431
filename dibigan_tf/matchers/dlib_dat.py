"""A reader of dlib's serialised face descriptor network (`dlib_face_recognition_resnet_model_v1.dat`,
shipped by the PyPI package `face_recognition_models`), with numpy alone.

The file holds weights, not structure: dlib rebuilds the network from a C++ type (the `anet_type`
of dlib's `examples/dnn_face_recognition_ex.cpp`) and fills it from the stream. So the structure
is written out here (`ARCHITECTURE`), and the reader walks the stream slot by slot in the order
dlib's own `deserialize` does, checking every version number, layer name and shape on the way,
and ends exactly at the file's last byte. A truncated, altered or foreign file stops with a
one-line `DlibDatError` (a `MatcherError`) naming the file and the byte offset where it went wrong.

dlib's encoding (`dlib/serialize.h`, `dlib/float_details.h`, `dlib/cuda/tensor.h`):

- every integer type: one control byte (bit 7: negative; low 4 bits: the number n of bytes that
  follow), then |v| in n little-endian bytes; bool: the ASCII byte '1' or '0'; string: its length
  (an integer), then its bytes;
- float and double: two integers, the int64 mantissa first, then the int16 exponent: m * 2^e
  (exponents 32000, 32001, 32002 stand for +inf, -inf, nan);
- a tensor: version 2, then n, k, nr, nc, then n*k*nr*nc little-endian float32 in NCHW order; an
  alias tensor (a view into a layer's parameter tensor): version 1, then n, k, nr, nc.

How the network nests (`dlib/dnn/core.h`): the loss layer wraps the whole network and writes
itself first (version, `loss_metric_2`, margin, distance threshold). Every other layer is an
`add_layer` (or `add_tag_layer` / `add_skip_layer`) that writes its version, then its whole
sub-network, then its own details. So the stream holds the wrappers' version numbers from the
output inwards (130 of them: 2 for a layer, 1 for a tag or skip, 3 for the layer sitting on the
input), then the input layer, then each layer's details from the input outwards.
"""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from dibigan_tf.matchers.base import MatcherError

#: the chip size the network takes (dlib's input_rgb_image_sized<150>)
CHIP_SIZE = 150


class DlibDatError(MatcherError):
    """The file is not (or no longer) dlib's face descriptor network; the message is one line
    naming the file and the byte offset."""


# --------------------------------------------------------------------------------- structure
#
# The network, from the output inwards, exactly as dlib's C++ type nests it:
#
#   loss_metric<fc_no_bias<128, avg_pool_everything<
#       alevel0<alevel1<alevel2<alevel3<alevel4<
#       max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>>
#
#   alevel0 = ares_down<256>                alevel1 = ares<256, ares<256, ares_down<256>>>
#   alevel2 = ares<128, ares<128, ares_down<128>>>
#   alevel3 = ares<64, ares<64, ares<64, ares_down<64>>>>     alevel4 = ares<32, ares<32, ares<32>>>
#   ares<N>      = relu<add_prev1<block<N, stride 1, tag1<x>>>>
#   ares_down<N> = relu<add_prev2<avg_pool<2,2,2,2, skip1<tag2<block<N, stride 2, tag1<x>>>>>>>>
#   block<N, s>  = affine<con<N,3,3,1,1, relu<affine<con<N,3,3,s,s, x>>>>>>
#
# Each entry: (kind, arguments). "tap" marks the outermost layer of a residual level: its output
# is that level's output (the whitebox taps of Eq. 7).

def _block(n, stride):
    return [("affine", {}), ("con", {"filters": n, "size": 3, "stride": 1}), ("relu", {}),
            ("affine", {}), ("con", {"filters": n, "size": 3, "stride": stride})]


def _ares(n, down=False):
    if down:
        return ([("relu", {}), ("add_prev", {"tag": 2}), ("avg_pool", {"size": 2, "stride": 2}),
                 ("skip", {"tag": 1}), ("tag", {"tag": 2})] + _block(n, 2) + [("tag", {"tag": 1})])
    return [("relu", {}), ("add_prev", {"tag": 1})] + _block(n, 1) + [("tag", {"tag": 1})]


def _level(name, *units):
    layers = [entry for unit in units for entry in unit]
    kind, args = layers[0]
    layers[0] = (kind, dict(args, tap=name))
    return layers


def _architecture():
    return ([("fc", {"outputs": 128}), ("avg_pool", {"size": 0, "stride": 1})]
            + _level("level0_256", _ares(256, down=True))
            + _level("level1_256", _ares(256), _ares(256), _ares(256, down=True))
            + _level("level2_128", _ares(128), _ares(128), _ares(128, down=True))
            + _level("level3_64", _ares(64), _ares(64), _ares(64), _ares(64, down=True))
            + _level("level4_32", _ares(32), _ares(32), _ares(32))
            + [("max_pool", {"size": 3, "stride": 2}), ("relu", {}), ("affine", {}),
               ("con", {"filters": 32, "size": 7, "stride": 2})])


#: (kind, arguments) of every layer, from the output inwards (130 entries)
ARCHITECTURE = tuple(_architecture())
#: the taps' names, from the input outwards
TAP_NAMES = tuple(args["tap"] for _, args in reversed(ARCHITECTURE) if "tap" in args)

# dlib's layer_mode (affine_) and fc_bias_mode enums
_CONV_MODE = 0
_FC_NO_BIAS = 1


@dataclasses.dataclass
class Layer:
    """One layer as read: its kind, the structural arguments above, and what the file gave
    (weights as numpy float32 in dlib's layout; pooling windows, strides and paddings)."""
    kind: str
    args: dict
    values: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DlibNetwork:
    """dlib's face descriptor network as read from its file."""
    path: str
    size: int                 # bytes in the file; the reader consumed all of them
    offset: int               # where the reader stopped (== size)
    means: tuple              # the input layer's (red, green, blue) means
    chip_size: int            # the input layer's size (150)
    margin: float             # loss_metric_2's training settings (not used to describe a face)
    distance_threshold: float
    layers: list              # Layer per ARCHITECTURE entry, from the output inwards

    @property
    def parameter_count(self) -> int:
        return int(sum(v.size for layer in self.layers for v in layer.values.values()
                       if isinstance(v, np.ndarray)))


# --------------------------------------------------------------------------------- the stream

class _Stream:
    """dlib's primitive encodings over the bytes of one file; every failure is a DlibDatError
    with the file name and the offset of the slot being read."""

    def __init__(self, path, data: bytes):
        self.path, self.data, self.pos = path, data, 0

    def fail(self, reason, at=None):
        at = self.pos if at is None else at
        raise DlibDatError(f"{self.path}: not dlib's face descriptor network as expected: "
                           f"{reason} at byte {at} of {len(self.data)}")

    def _take(self, n, what, start):
        if self.pos + n > len(self.data):
            raise DlibDatError(f"{self.path}: truncated: {what} needs {n} more bytes at byte "
                               f"{self.pos} of {len(self.data)} (slot starts at byte {start})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def integer(self, what, signed=True):
        start = self.pos
        control = self._take(1, what, start)[0]
        n = control & 0x0F
        if control & 0x70 or n > 8:
            self.fail(f"{what}: bad integer control byte 0x{control:02x}", start)
        value = int.from_bytes(self._take(n, what, start), "little")
        if control & 0x80:
            if not signed:
                self.fail(f"{what}: negative value for an unsigned integer", start)
            value = -value
        return value

    def _expect(self, read, expected, what):
        start = self.pos
        value = read(what)
        if value != expected:
            self.fail(f"{what} is {value!r}, expected {expected!r}", start)
        return value

    def expect_int(self, expected, what):
        return self._expect(self.integer, expected, what)

    def boolean(self, what):
        start = self.pos
        byte = self._take(1, what, start)
        if byte not in (b"0", b"1"):
            self.fail(f"{what}: bool byte {byte!r}, expected '0' or '1'", start)
        return byte == b"1"

    def string(self, what, limit=256):
        start = self.pos
        n = self.integer(what + " (length)", signed=False)
        if n > limit:
            self.fail(f"{what}: a string of {n} bytes", start)
        return self._take(n, what, start).decode("latin-1")

    def expect_string(self, expected, what):
        return self._expect(self.string, expected, what)

    def real(self, what):
        """dlib's float/double: int64 mantissa, then int16 exponent."""
        start = self.pos
        mantissa = self.integer(what + " (mantissa)")
        exponent = self.integer(what + " (exponent)")
        if exponent == 32000:
            return math.inf
        if exponent == 32001:
            return -math.inf
        if exponent == 32002:
            return math.nan
        if not -32768 <= exponent < 32768 or abs(mantissa) >= 1 << 63:
            self.fail(f"{what}: float out of range", start)
        return math.ldexp(mantissa, exponent)

    def dims(self, what):
        return tuple(self.integer(f"{what} ({d})", signed=False) for d in ("n", "k", "nr", "nc"))

    def tensor(self, what, shape=None):
        start = self.pos
        self.expect_int(2, what + " version")
        dims = self.dims(what)
        count = int(np.prod(dims, dtype=np.int64))
        if shape is not None and int(np.prod(shape, dtype=np.int64)) != count:
            self.fail(f"{what} has dims {dims} ({count} values), expected {shape}", start)
        raw = self._take(4 * count, what + " values", start)
        values = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)
        if not np.all(np.isfinite(values)):
            self.fail(f"{what} holds non-finite values", start)
        return values

    def alias(self, what, expected=None):
        start = self.pos
        self.expect_int(1, what + " version")
        dims = self.dims(what)
        if expected is not None and dims != tuple(expected):
            self.fail(f"{what} has dims {dims}, expected {tuple(expected)}", start)
        return dims


# --------------------------------------------------------------------------------- layers

def _read_input(s: _Stream):
    s.expect_string("input_rgb_image_sized", "input layer")
    means = tuple(s.real(f"input layer mean {c}") for c in ("red", "green", "blue"))
    start = s.pos
    rows, cols = s.integer("input rows", False), s.integer("input cols", False)
    if (rows, cols) != (CHIP_SIZE, CHIP_SIZE):
        s.fail(f"input layer size is {rows}x{cols}, expected {CHIP_SIZE}x{CHIP_SIZE}", start)
    if not all(0.0 <= m <= 255.0 for m in means):
        s.fail(f"input layer means {means} are not pixel values", start)
    return means, rows


def _read_pool(s: _Stream, layer: Layer, name: str):
    size, stride = layer.args["size"], layer.args["stride"]
    s.expect_string(name + "_2", f"{name} layer")
    where = f"{name} {size}x{size}/{stride}"
    start = s.pos
    nr, nc = s.integer(where + " rows", False), s.integer(where + " cols", False)
    sy, sx = s.integer(where + " stride y"), s.integer(where + " stride x")
    py, px = s.integer(where + " padding y"), s.integer(where + " padding x")
    if (nr, nc, sy, sx) != (size, size, stride, stride):
        s.fail(f"{name} window {nr}x{nc} stride {sy}x{sx}, expected {size}x{size} stride "
               f"{stride}", start)
    if (py, px) != (0, 0):
        s.fail(f"{name} padding {py}x{px}, expected 0 (what the network uses)", start)
    layer.values.update(window=size, stride=stride)


def _read_con(s: _Stream, layer: Layer, channels: int):
    n, size, stride = layer.args["filters"], layer.args["size"], layer.args["stride"]
    where = f"con {n} {size}x{size}/{stride}"
    s.expect_string("con_4", "con layer")
    params = s.tensor(where + " params")
    start = s.pos
    got = (s.integer(where + " filters"), s.integer(where + " rows"), s.integer(where + " cols"),
           s.integer(where + " stride y"), s.integer(where + " stride x"))
    if got != (n, size, size, stride, stride):
        s.fail(f"con layer (filters, rows, cols, strides) {got}, expected "
               f"{(n, size, size, stride, stride)}", start)
    start = s.pos
    py, px = s.integer(where + " padding y"), s.integer(where + " padding x")
    # dlib's default: size/2 at stride 1, 0 otherwise (150 -> 72 after the 7x7/2 stem)
    expected_pad = size // 2 if stride == 1 else 0
    if (py, px) != (expected_pad, expected_pad):
        s.fail(f"con padding {py}x{px}, expected {expected_pad}", start)
    filters = s.alias(where + " filters", (n, channels, size, size))
    s.alias(where + " biases", (1, n, 1, 1))
    for name in ("learning rate", "weight decay", "bias learning rate", "bias weight decay"):
        s.real(f"{where} {name} multiplier")
    count = int(np.prod(filters))
    if params.size != count + n:
        s.fail(f"{where}: params hold {params.size} values, expected {count + n}")
    flat = params.reshape(-1)
    layer.values.update(filters=flat[:count].reshape(filters), biases=flat[count:].copy(),
                        stride=stride, padding=py)
    return n


def _read_affine(s: _Stream, layer: Layer, channels: int):
    s.expect_string("affine_", "affine layer")
    params = s.tensor("affine params", (2 * channels,))
    s.alias("affine gamma", (1, channels, 1, 1))
    s.alias("affine beta", (1, channels, 1, 1))
    s.expect_int(_CONV_MODE, "affine mode (per channel)")
    flat = params.reshape(-1)
    layer.values.update(gamma=flat[:channels].copy(), beta=flat[channels:].copy())


def _read_fc(s: _Stream, layer: Layer, channels: int):
    outputs = layer.args["outputs"]
    s.expect_string("fc_2", "fc layer")
    s.expect_int(outputs, "fc outputs")
    s.expect_int(channels, "fc inputs")
    params = s.tensor("fc params", (channels, outputs))
    s.alias("fc weights", (channels, outputs, 1, 1))
    s.alias("fc biases (none)", (0, 0, 0, 0))
    s.expect_int(_FC_NO_BIAS, "fc bias mode (no bias)")
    for name in ("learning rate", "weight decay", "bias learning rate", "bias weight decay"):
        s.real(f"fc {name} multiplier")
    layer.values.update(weights=params.reshape(channels, outputs))


def _read_details(s: _Stream, layer: Layer, channels: int) -> int:
    """One layer's details; returns the channel count after it."""
    kind = layer.kind
    if kind == "con":
        return _read_con(s, layer, channels)
    if kind == "affine":
        _read_affine(s, layer, channels)
    elif kind == "relu":
        s.expect_string("relu_", "relu layer")
    elif kind == "add_prev":
        s.expect_string("add_prev_", f"add_prev{layer.args['tag']} layer")
    elif kind == "max_pool":
        _read_pool(s, layer, "max_pool")
    elif kind == "avg_pool":
        _read_pool(s, layer, "avg_pool")
    elif kind == "fc":
        _read_fc(s, layer, channels)
        return layer.args["outputs"]
    else:  # pragma: no cover - ARCHITECTURE has no other kinds
        raise AssertionError(kind)
    return channels


def _read_state(s: _Stream, what, input_layer=False):
    """The add_layer fields after its details: three bools and its cached tensors (empty in a
    saved network, but read whatever they hold)."""
    for name in ("setup called", "gradient input stale", "output disabled"):
        s.boolean(f"{what} {name}")
    s.tensor(f"{what} x_grad")
    s.tensor(f"{what} cached output")
    if input_layer:
        s.tensor(f"{what} grad_final")
        s.integer(f"{what} sample expansion factor", signed=False)
    else:
        s.tensor(f"{what} params_grad")


def read_dlib_network(path) -> DlibNetwork:
    """Reads dlib's face descriptor network from `path` (numpy only). Raises DlibDatError (one
    line: file and byte offset) unless the file is exactly that network, to its last byte."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise DlibDatError(f"{path}: cannot read: {error.strerror or error}") from None
    s = _Stream(path, data)
    layers = [Layer(kind, dict(args)) for kind, args in ARCHITECTURE]

    # 1. the loss layer, which wraps everything and writes itself first
    s.expect_int(1, "loss wrapper version")
    s.expect_string("loss_metric_2", "loss layer")
    margin = s.real("loss margin")
    threshold = s.real("loss distance threshold")

    # 2. every wrapper's version, from the output inwards
    for i, layer in enumerate(layers):
        wrapper = {"tag": 1, "skip": 1}.get(layer.kind, 3 if i == len(layers) - 1 else 2)
        s.expect_int(wrapper, f"version of wrapper {i} ({layer.kind}, counted from the output)")

    # 3. the input layer, then each layer's details from the input outwards
    means, chip = _read_input(s)
    channels, tagged = 3, {}
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        if layer.kind == "tag":
            tagged[layer.args["tag"]] = channels
            continue
        if layer.kind == "skip":
            channels = tagged[layer.args["tag"]]
            continue
        before = channels
        if layer.kind == "add_prev":
            channels = max(channels, tagged[layer.args["tag"]])
        channels = _read_details(s, layer, channels)
        layer.values["channels_in"], layer.values["channels_out"] = before, channels
        _read_state(s, f"layer {i} ({layer.kind})", input_layer=i == len(layers) - 1)
    if s.pos != len(data):
        s.fail(f"{len(data) - s.pos} bytes left after the network")
    return DlibNetwork(path=path, size=len(data), offset=s.pos, means=means, chip_size=chip,
                       margin=margin, distance_threshold=threshold, layers=layers)
