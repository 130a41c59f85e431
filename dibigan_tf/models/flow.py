"""The bijection H of DiBiGAN: a multi-scale Glow / RealNVP normalizing flow in TFP bijectors.

Paper (Vec2Face / DiBiGAN, sec. 3.2 "Learning the Bijection H" and sec. 4 "Network Architectures"):
H is a bijection x -> z = H(x) with a tractable log-determinant, "a configuration of 5
sub-mapping functions where each of them is presented with two 32-feature-map residual blocks",
trained with the log-likelihood objective under *class-conditional* Gaussian priors: the K
training identities get K Gaussians N(mu_k, Sigma_k) and H maximises

    log p_x(x, k) = log N(H(x); mu_k, Sigma_k) + log|det dH/dx|.

Here a "sub-mapping function" is one Glow step  ActNorm -> invertible channel mixing -> affine
coupling, whose shift/scale network is  conv3x3 -> `num_res_blocks` residual blocks of
`hidden_channels` feature maps -> zero-initialised conv3x3.

Multi-scale architecture (RealNVP / Glow lineage), for ``num_squeezes = L`` levels:

    level 0:      Squeeze (space-to-depth 2x2)              -> all channels active
                  steps[0] Glow steps on the active channels
    level l > 0:  factor out half of the active channels (they are final latents), then
                  Squeeze the whole tensor and regroup channels (``tfb.Permute``) so that the
                  squeezed *active* channels come first
                  steps[l] Glow steps on the active channels (``ActiveChannels`` wrapper)

``num_steps`` (paper: 5) is distributed over the levels, earlier levels first (5 over 2 levels ->
[3, 2]). The factored-out channels are carried through the later squeezes unchanged, so z is one
tensor of the final squeezed shape with exactly as many dimensions as x:

    image_shape      num_squeezes (default)   latent_shape (flow.latent_shape)
    (32, 32, 1)      2                        (8, 8, 16)
    (64, 64, 3)      2                        (16, 16, 48)
    (H, W, C)        L                        (H / 2^L, W / 2^L, C * 4^L)

Conventions
-----------
* Tensors are ``[batch, H, W, C]`` (NHWC, rank 4).
* x is the continuous, dequantised image in [-0.5, 0.5]: ``x = (pixel + u) / 256 - 0.5`` with
  ``u ~ U(0, 1)``, see `dequantize`.
* ``flow.forward(x) -> (z, log_det)``, ``log_det = log|det dz/dx|`` per example, shape [batch].
* ``flow.inverse(z) -> x``.
* ActNorm data-dependent initialisation is explicit: call ``flow.initialize(x_first_batch)`` once
  before training (eagerly or in a tf.function, in cross-replica context under a
  ``tf.distribute`` strategy). It is idempotent (guarded by each ActNorm's ``initialized``
  variable), deterministic, and the ``initialized`` flags are checkpointed, so after restoring a
  checkpoint the call is a no-op. Without it, ActNorm starts as the identity.
* All variables are created at construction, so ``tf.train.Checkpoint(flow=flow)`` can be
  restored before the first step. Random init is seeded (``seed`` argument), fixed permutations
  and LU pivots are stored as non-trainable variables (so they are checkpointed too).
* ``forward``/``inverse`` have no Python side effects per call: wrap them (or a train step) in
  ``tf.function``; they do not retrace for a fixed input shape/dtype and work inside
  ``strategy.run`` with variables created under ``strategy.scope()``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from dibigan_tf.keras_compat import keras
from dibigan_tf import losses

tfb = tfp.bijectors
tfd = tfp.distributions

__all__ = [
    "FlowBijector", "Squeeze", "ActNorm", "Invertible1x1Conv", "AffineCoupling",
    "ActiveChannels", "SequentialFlow", "Flow", "build_flow", "ClassConditionalGaussianPrior",
    "dequantize", "to_pixels", "nll_loss", "bits_per_dim", "make_coupling_network",
    "FULL_COVARIANCE_MAX_DIMS",
]

EVENT_NDIMS = 3
FULL_COVARIANCE_MAX_DIMS = 4096


def _as_dtype(dtype) -> tf.DType:
    dtype = tf.as_dtype(dtype)
    if dtype not in (tf.float32, tf.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _batch_zeros(x):
    return tf.zeros(tf.shape(x)[:1], dtype=x.dtype)


def _num_pixels(x):
    """H * W of a [B, H, W, C] tensor, static when possible, in x.dtype."""
    h, w = x.shape[1], x.shape[2]
    if h is not None and w is not None:
        return tf.constant(float(h * w), dtype=x.dtype)
    s = tf.shape(x)
    return tf.cast(s[1] * s[2], x.dtype)


def _broadcast_to_batch(ldj, x):
    return ldj + _batch_zeros(x)


# ---------------------------------------------------------------------------------------------
# Bijectors
# ---------------------------------------------------------------------------------------------

class FlowBijector(tfb.Bijector):
    """Base class: event rank 3 ([H, W, C]) bijector computing output and log-det in one pass.

    Subclasses implement ``flow_forward(x) -> (y, fldj)`` and ``flow_inverse(y) -> (x, ildj)``
    with log-dets of shape [batch]. The TFP methods ``_forward``, ``_inverse``,
    ``_forward_log_det_jacobian`` and ``_inverse_log_det_jacobian`` are derived from them, so
    every subclass is a regular ``tfb.Bijector`` (use ``event_ndims=3``). `SequentialFlow` and
    `Flow` call ``flow_forward``/``flow_inverse`` directly, which avoids running the coupling
    networks twice (once for the value, once for the log-det) and bypasses TFP's cache.
    """

    def __init__(self, *, dtype, name, is_constant_jacobian=False, validate_args=False):
        super().__init__(
            forward_min_event_ndims=EVENT_NDIMS,
            inverse_min_event_ndims=EVENT_NDIMS,
            is_constant_jacobian=is_constant_jacobian,
            validate_args=validate_args,
            dtype=dtype,
            parameters=None,  # None => every instance has its own TFP cache.
            name=name)

    # -- one-pass API -------------------------------------------------------------------------
    def flow_forward(self, x):
        raise NotImplementedError

    def flow_inverse(self, y):
        raise NotImplementedError

    def flow_initialize(self, x):
        """Data-dependent initialisation pass (default: plain forward). Returns (y, fldj)."""
        return self.flow_forward(x)

    # -- TFP API ------------------------------------------------------------------------------
    def _forward(self, x):
        return self.flow_forward(x)[0]

    def _inverse(self, y):
        return self.flow_inverse(y)[0]

    def _forward_log_det_jacobian(self, x):
        return self.flow_forward(x)[1]

    def _inverse_log_det_jacobian(self, y):
        return self.flow_inverse(y)[1]


def _forward_with_ldj(bijector, x):
    if isinstance(bijector, FlowBijector):
        return bijector.flow_forward(x)
    y = bijector.forward(x)
    ldj = bijector.forward_log_det_jacobian(x, event_ndims=EVENT_NDIMS)
    return y, _broadcast_to_batch(tf.cast(ldj, x.dtype), x)


def _inverse_with_ldj(bijector, y):
    if isinstance(bijector, FlowBijector):
        return bijector.flow_inverse(y)
    x = bijector.inverse(y)
    ldj = bijector.inverse_log_det_jacobian(y, event_ndims=EVENT_NDIMS)
    return x, _broadcast_to_batch(tf.cast(ldj, y.dtype), y)


def _initialize_with_ldj(bijector, x):
    if isinstance(bijector, FlowBijector):
        return bijector.flow_initialize(x)
    return _forward_with_ldj(bijector, x)


class Squeeze(FlowBijector):
    """Space-to-depth 2x2: [B, H, W, C] -> [B, H/2, W/2, 4C]; a permutation, so log-det = 0.

    Output channel ``(dy * 2 + dx) * C + c`` holds input pixel ``(2i + dy, 2j + dx, c)``
    (``tf.nn.space_to_depth`` ordering).
    """

    def __init__(self, block_size: int = 2, dtype=tf.float32, name: str = "squeeze"):
        self.block_size = int(block_size)
        super().__init__(dtype=_as_dtype(dtype), name=name, is_constant_jacobian=True)

    def flow_forward(self, x):
        return tf.nn.space_to_depth(x, self.block_size), _batch_zeros(x)

    def flow_inverse(self, y):
        return tf.nn.depth_to_space(y, self.block_size), _batch_zeros(y)

    def _forward_event_shape(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        if input_shape.rank is None:
            return tf.TensorShape(None)
        h, w, c = input_shape[-3:]
        b = self.block_size
        return input_shape[:-3].concatenate([
            None if h is None else h // b, None if w is None else w // b,
            None if c is None else c * b * b])

    def _inverse_event_shape(self, output_shape):
        output_shape = tf.TensorShape(output_shape)
        if output_shape.rank is None:
            return tf.TensorShape(None)
        h, w, c = output_shape[-3:]
        b = self.block_size
        return output_shape[:-3].concatenate([
            None if h is None else h * b, None if w is None else w * b,
            None if c is None else c // (b * b)])

    def _forward_event_shape_tensor(self, input_shape):
        b = self.block_size
        return tf.concat([input_shape[:-3], input_shape[-3:-1] // b, input_shape[-1:] * b * b], 0)

    def _inverse_event_shape_tensor(self, output_shape):
        b = self.block_size
        return tf.concat([output_shape[:-3], output_shape[-3:-1] * b, output_shape[-1:] // (b * b)],
                         0)


class ActNorm(FlowBijector):
    """Per-channel affine y = (x + bias) * exp(log_scale); log-det = H * W * sum(log_scale).

    Variables: ``bias`` [C], ``log_scale`` [C] (trainable) and ``initialized`` (bool,
    non-trainable). ``flow_initialize(x)`` sets bias = -mean, log_scale = log(init_scale / (std +
    eps)) from the per-channel statistics of x (over batch, H, W) if not yet initialised; the
    assignment is a ``tf.where`` on ``initialized`` (no Python branching, so it also works in a
    tf.function and is a no-op after a restore of an initialised checkpoint).
    """

    def __init__(self, num_channels: int, dtype=tf.float32, init_scale: float = 1.0,
                 eps: float = 1e-6, name: str = "act_norm"):
        dtype = _as_dtype(dtype)
        super().__init__(dtype=dtype, name=name)
        self.num_channels = int(num_channels)
        self.init_scale = float(init_scale)
        self.eps = float(eps)
        with tf.name_scope(name):
            self.bias = tf.Variable(tf.zeros([num_channels], dtype), name="bias")
            self.log_scale = tf.Variable(tf.zeros([num_channels], dtype), name="log_scale")
            self.initialized = tf.Variable(
                False, trainable=False, name="initialized",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def flow_forward(self, x):
        y = (x + self.bias) * tf.exp(self.log_scale)
        ldj = _num_pixels(x) * tf.reduce_sum(self.log_scale)
        return y, _broadcast_to_batch(ldj, x)

    def flow_inverse(self, y):
        x = y * tf.exp(-self.log_scale) - self.bias
        ldj = -_num_pixels(y) * tf.reduce_sum(self.log_scale)
        return x, _broadcast_to_batch(ldj, y)

    def flow_initialize(self, x):
        mean, var = tf.nn.moments(x, axes=[0, 1, 2])
        std = tf.sqrt(var)
        init = self.initialized
        self.bias.assign(tf.where(init, self.bias, -mean))
        self.log_scale.assign(tf.where(
            init, self.log_scale,
            tf.math.log(tf.cast(self.init_scale, x.dtype) / (std + tf.cast(self.eps, x.dtype)))))
        self.initialized.assign(True)
        return self.flow_forward(x)


def _numpy_lu(a: np.ndarray):
    """LU with partial pivoting: returns P, L, U with a = P @ L @ U (L unit lower-triangular)."""
    n = a.shape[0]
    u = a.astype(np.float64).copy()
    l = np.eye(n)
    perm = np.arange(n)
    for k in range(n - 1):
        piv = k + int(np.argmax(np.abs(u[k:, k])))
        if piv != k:
            u[[k, piv], :] = u[[piv, k], :]
            l[[k, piv], :k] = l[[piv, k], :k]
            perm[[k, piv]] = perm[[piv, k]]
        for i in range(k + 1, n):
            l[i, k] = u[i, k] / u[k, k]
            u[i, k:] -= l[i, k] * u[k, k:]
    p = np.eye(n)[perm].T
    return p, l, np.triu(u)


class Invertible1x1Conv(FlowBijector):
    """Glow's invertible 1x1 convolution with LU-decomposed weight.

    W = P @ (tril(lower, -1) + I) @ (triu(upper, 1) + diag(sign_s * exp(log_s))), initialised
    from a seeded random rotation. y[..., j] = sum_i x[..., i] W[i, j];
    log-det = H * W * sum(log_s). ``P`` and ``sign_s`` are non-trainable variables (checkpointed).
    """

    def __init__(self, num_channels: int, dtype=tf.float32, seed: int = 0,
                 name: str = "invertible_1x1_conv"):
        dtype = _as_dtype(dtype)
        super().__init__(dtype=dtype, name=name)
        c = int(num_channels)
        self.num_channels = c
        rng = np.random.RandomState(seed)
        q, _ = np.linalg.qr(rng.randn(c, c))
        p, l, u = _numpy_lu(q)
        s = np.diag(u)
        with tf.name_scope(name):
            self.permutation = tf.Variable(p, dtype=dtype, trainable=False, name="permutation")
            self.sign_s = tf.Variable(np.sign(s), dtype=dtype, trainable=False, name="sign_s")
            self.lower = tf.Variable(l, dtype=dtype, name="lower")
            self.upper = tf.Variable(np.triu(u, 1), dtype=dtype, name="upper")
            self.log_s = tf.Variable(np.log(np.abs(s)), dtype=dtype, name="log_s")

    def _factors(self):
        eye = tf.eye(self.num_channels, dtype=self.dtype)
        l = tf.linalg.band_part(self.lower, -1, 0) - tf.linalg.band_part(self.lower, 0, 0) + eye
        u = (tf.linalg.band_part(self.upper, 0, -1) - tf.linalg.band_part(self.upper, 0, 0)
             + tf.linalg.diag(self.sign_s * tf.exp(self.log_s)))
        return l, u

    def weight(self):
        l, u = self._factors()
        return self.permutation @ l @ u

    def inverse_weight(self):
        l, u = self._factors()
        eye = tf.eye(self.num_channels, dtype=self.dtype)
        l_inv = tf.linalg.triangular_solve(l, eye, lower=True)
        u_inv = tf.linalg.triangular_solve(u, eye, lower=False)
        return u_inv @ l_inv @ tf.transpose(self.permutation)

    def flow_forward(self, x):
        y = tf.tensordot(x, self.weight(), axes=[[3], [0]])
        ldj = _num_pixels(x) * tf.reduce_sum(self.log_s)
        return y, _broadcast_to_batch(ldj, x)

    def flow_inverse(self, y):
        x = tf.tensordot(y, self.inverse_weight(), axes=[[3], [0]])
        ldj = -_num_pixels(y) * tf.reduce_sum(self.log_s)
        return x, _broadcast_to_batch(ldj, y)


def make_coupling_network(in_channels: int, out_channels: int, hidden_channels: int = 32,
                          num_res_blocks: int = 2, dtype=tf.float32, seed: int = 0,
                          name: str = "coupling_net") -> keras.Model:
    """conv3x3-relu -> num_res_blocks x residual block -> zero-initialised conv3x3.

    Residual block (post-activation): h <- relu(h + conv3x3(relu(conv3x3(h)))), all convs with
    ``hidden_channels`` feature maps (the paper: two 32-feature-map residual blocks).

    Input [B, H, W, in_channels] (any H, W), output [B, H, W, out_channels]. The last conv is
    zero-initialised so a fresh coupling is a fixed per-channel scaling.
    """
    dtype = _as_dtype(dtype)
    dname = dtype.name
    counter = [0]

    def init():
        counter[0] += 1
        return keras.initializers.GlorotUniform(seed=int(seed) * 1000 + counter[0])

    def conv(ch, lname, zero=False):
        return keras.layers.Conv2D(
            ch, 3, padding="same", dtype=dname, name=lname,
            kernel_initializer="zeros" if zero else init(), bias_initializer="zeros")

    inp = keras.Input(shape=(None, None, in_channels), dtype=dname, name=f"{name}_in")
    h = conv(hidden_channels, f"{name}_conv_in")(inp)
    h = keras.layers.ReLU(dtype=dname, name=f"{name}_relu_in")(h)
    for i in range(num_res_blocks):
        # Post-activation (original ResNet) block: h = relu(h + conv(relu(conv(h)))).
        r = conv(hidden_channels, f"{name}_res{i}_conv1")(h)
        r = keras.layers.ReLU(dtype=dname, name=f"{name}_res{i}_relu1")(r)
        r = conv(hidden_channels, f"{name}_res{i}_conv2")(r)
        h = keras.layers.Add(dtype=dname, name=f"{name}_res{i}_add")([h, r])
        h = keras.layers.ReLU(dtype=dname, name=f"{name}_res{i}_relu2")(h)
    out = conv(out_channels, f"{name}_conv_out", zero=True)(h)
    return keras.Model(inp, out, name=name)


class AffineCoupling(FlowBijector):
    """Channel-wise affine coupling (Glow): x = [x_a, x_b] (first C//2 channels, rest).

    shift, raw = split(NN(x_a)); scale = sigmoid(raw + 2)
    y_a = x_a;  y_b = (x_b + shift) * scale;  log-det = sum_{H, W, C_b} log scale.
    NN is a Keras model from `make_coupling_network` (zero-initialised output conv).
    """

    def __init__(self, num_channels: int, hidden_channels: int = 32, num_res_blocks: int = 2,
                 dtype=tf.float32, seed: int = 0, name: str = "affine_coupling"):
        dtype = _as_dtype(dtype)
        super().__init__(dtype=dtype, name=name)
        c = int(num_channels)
        if c < 2:
            raise ValueError(f"AffineCoupling needs >= 2 channels, got {c}")
        self.num_channels = c
        self.split = c // 2
        self.network = make_coupling_network(
            self.split, 2 * (c - self.split), hidden_channels, num_res_blocks, dtype=dtype,
            seed=seed, name=f"{name}_net")

    def _shift_and_log_scale(self, x_a):
        h = self.network(x_a)
        nb = self.num_channels - self.split
        shift, raw = h[..., :nb], h[..., nb:]
        raw = raw + tf.cast(2.0, raw.dtype)
        return shift, tf.sigmoid(raw), tf.math.log_sigmoid(raw)

    def flow_forward(self, x):
        x_a, x_b = x[..., :self.split], x[..., self.split:]
        shift, scale, log_scale = self._shift_and_log_scale(x_a)
        y_b = (x_b + shift) * scale
        return tf.concat([x_a, y_b], axis=-1), tf.reduce_sum(log_scale, axis=[1, 2, 3])

    def flow_inverse(self, y):
        y_a, y_b = y[..., :self.split], y[..., self.split:]
        shift, scale, log_scale = self._shift_and_log_scale(y_a)
        x_b = y_b / scale - shift
        return tf.concat([y_a, x_b], axis=-1), -tf.reduce_sum(log_scale, axis=[1, 2, 3])


class SequentialFlow(FlowBijector):
    """Composition: forward applies ``bijectors[0]`` first (unlike ``tfb.Chain``)."""

    def __init__(self, bijectors: Sequence[tfb.Bijector], dtype=tf.float32,
                 name: str = "sequential_flow"):
        super().__init__(dtype=_as_dtype(dtype), name=name)
        self.bijectors = list(bijectors)

    def flow_forward(self, x):
        ldj = _batch_zeros(x)
        for b in self.bijectors:
            x, l = _forward_with_ldj(b, x)
            ldj = ldj + l
        return x, ldj

    def flow_inverse(self, y):
        ldj = _batch_zeros(y)
        for b in reversed(self.bijectors):
            y, l = _inverse_with_ldj(b, y)
            ldj = ldj + l
        return y, ldj

    def flow_initialize(self, x):
        ldj = _batch_zeros(x)
        for b in self.bijectors:
            x, l = _initialize_with_ldj(b, x)
            ldj = ldj + l
        return x, ldj

    def _forward_event_shape(self, input_shape):
        for b in self.bijectors:
            input_shape = b.forward_event_shape(input_shape)
        return input_shape

    def _inverse_event_shape(self, output_shape):
        for b in reversed(self.bijectors):
            output_shape = b.inverse_event_shape(output_shape)
        return output_shape

    def _forward_event_shape_tensor(self, input_shape):
        for b in self.bijectors:
            input_shape = b.forward_event_shape_tensor(input_shape)
        return input_shape

    def _inverse_event_shape_tensor(self, output_shape):
        for b in reversed(self.bijectors):
            output_shape = b.inverse_event_shape_tensor(output_shape)
        return output_shape


class ActiveChannels(FlowBijector):
    """Applies a shape-preserving ``inner`` bijector to the first ``num_active`` channels and
    the identity to the rest (the factored-out latents of the multi-scale architecture)."""

    def __init__(self, inner: FlowBijector, num_active: int, dtype=tf.float32,
                 name: str = "active_channels"):
        super().__init__(dtype=_as_dtype(dtype), name=name)
        self.inner = inner
        self.num_active = int(num_active)

    def _split(self, x):
        return x[..., :self.num_active], x[..., self.num_active:]

    def flow_forward(self, x):
        a, p = self._split(x)
        a, ldj = _forward_with_ldj(self.inner, a)
        return tf.concat([a, p], axis=-1), ldj

    def flow_inverse(self, y):
        a, p = self._split(y)
        a, ldj = _inverse_with_ldj(self.inner, a)
        return tf.concat([a, p], axis=-1), ldj

    def flow_initialize(self, x):
        a, p = self._split(x)
        a, ldj = _initialize_with_ldj(self.inner, a)
        return tf.concat([a, p], axis=-1), ldj


# ---------------------------------------------------------------------------------------------
# The flow H
# ---------------------------------------------------------------------------------------------

def _default_num_squeezes(h: int, w: int, num_steps: int) -> int:
    n = 0
    while n < 2 and n < num_steps and h % 2 == 0 and w % 2 == 0:
        h, w, n = h // 2, w // 2, n + 1
    if n == 0:
        raise ValueError("image height and width must be even (at least one 2x2 squeeze)")
    return n


def _distribute_steps(num_steps: int, num_levels: int):
    base, extra = divmod(num_steps, num_levels)
    return [base + (1 if i < extra else 0) for i in range(num_levels)]


class Flow(tf.Module):
    """Multi-scale Glow-style bijection H: x [B, H, W, C] in [-0.5, 0.5] -> z [B, *latent_shape].

    Attributes: ``image_shape``, ``latent_shape``, ``num_dims`` (= H*W*C), ``steps_per_level``,
    ``bijector`` (a `SequentialFlow`, i.e. a ``tfb.Bijector`` with event_ndims=3, usable in
    ``tfd.TransformedDistribution``), ``actnorms`` (list of `ActNorm`). All variables exist after
    construction; ``build(image_shape)`` only checks the shape (for Keras-like call sites).
    """

    def __init__(self, image_shape, num_steps: int = 5, hidden_channels: int = 32,
                 num_res_blocks: int = 2, mixing: str = "conv1x1",
                 num_squeezes: Optional[int] = None, dtype=tf.float32, seed: int = 0,
                 name: str = "flow"):
        super().__init__(name=name)
        dtype = _as_dtype(dtype)
        h, w, c = (int(v) for v in image_shape)
        if mixing not in ("conv1x1", "permute"):
            raise ValueError(f"mixing must be 'conv1x1' or 'permute', got {mixing!r}")
        if num_steps < 1:
            raise ValueError("num_steps must be >= 1")
        if num_squeezes is None:
            num_squeezes = _default_num_squeezes(h, w, num_steps)
        num_squeezes = int(num_squeezes)
        if num_squeezes < 1 or num_squeezes > num_steps:
            raise ValueError("need 1 <= num_squeezes <= num_steps (each level has >= 1 step)")
        if h % (2 ** num_squeezes) or w % (2 ** num_squeezes):
            raise ValueError(f"H, W = {h}, {w} not divisible by 2**{num_squeezes}")

        self.image_shape = (h, w, c)
        self.num_dims = h * w * c
        self.dtype = dtype
        self.mixing = mixing
        self.num_squeezes = num_squeezes
        self.hidden_channels = int(hidden_channels)
        self.num_res_blocks = int(num_res_blocks)
        self.steps_per_level = tuple(_distribute_steps(int(num_steps), num_squeezes))
        self.actnorms = []

        layers = []
        ch, active, step = c, c, 0
        with tf.name_scope(name):
            for level, n_level_steps in enumerate(self.steps_per_level):
                layers.append(Squeeze(dtype=dtype, name=f"squeeze_{level}"))
                if level > 0 and active < ch:
                    # Regroup: the squeezed active channels first, factored-out ones after.
                    act = [b * ch + i for b in range(4) for i in range(active)]
                    pas = [b * ch + i for b in range(4) for i in range(active, ch)]
                    layers.append(tfb.Permute(permutation=act + pas, axis=-1,
                                              name=f"regroup_{level}"))
                ch, active = 4 * ch, 4 * active
                steps = []
                for _ in range(n_level_steps):
                    steps.append(self._make_step(active, step, seed, dtype))
                    step += 1
                level_flow = SequentialFlow(steps, dtype=dtype, name=f"level_{level}")
                if active < ch:
                    level_flow = ActiveChannels(level_flow, active, dtype=dtype,
                                                name=f"level_{level}_active")
                layers.append(level_flow)
                if level + 1 < num_squeezes:
                    active = active // 2  # factor out half of the active channels
            self.bijector = SequentialFlow(layers, dtype=dtype, name="H")
        self.latent_shape = (h // 2 ** num_squeezes, w // 2 ** num_squeezes,
                             c * 4 ** num_squeezes)

    def _make_step(self, channels, index, seed, dtype):
        actnorm = ActNorm(channels, dtype=dtype, name=f"actnorm_{index}")
        self.actnorms.append(actnorm)
        if self.mixing == "conv1x1":
            mix = Invertible1x1Conv(channels, dtype=dtype, seed=seed * 100 + index,
                                    name=f"conv1x1_{index}")
        else:
            mix = tfb.Permute(permutation=list(range(channels - 1, -1, -1)), axis=-1,
                              name=f"permute_{index}")
        coupling = AffineCoupling(channels, self.hidden_channels, self.num_res_blocks,
                                  dtype=dtype, seed=seed * 100 + index,
                                  name=f"coupling_{index}")
        return SequentialFlow([actnorm, mix, coupling], dtype=dtype, name=f"step_{index}")

    # -- API ----------------------------------------------------------------------------------
    def build(self, image_shape=None):
        """No-op (variables are created in the constructor); checks ``image_shape``."""
        if image_shape is not None and tuple(int(v) for v in image_shape[-3:]) != self.image_shape:
            raise ValueError(f"flow was built for {self.image_shape}, got {image_shape}")
        return self

    def _cast(self, x):
        return tf.cast(tf.convert_to_tensor(x), self.dtype)

    def forward(self, x):
        """x [B, H, W, C] -> (z [B, *latent_shape], log|det dz/dx| [B])."""
        return self.bijector.flow_forward(self._cast(x))

    def inverse(self, z):
        """z [B, *latent_shape] -> x [B, H, W, C]."""
        return self.bijector.flow_inverse(self._cast(z))[0]

    def inverse_and_log_det(self, z):
        """z -> (x, log|det dx/dz| [B])."""
        return self.bijector.flow_inverse(self._cast(z))

    def __call__(self, x):
        return self.forward(x)

    def initialize(self, x):
        """ActNorm data-dependent init from batch x (idempotent); returns (z, log_det)."""
        return self.bijector.flow_initialize(self._cast(x))

    @property
    def initialized(self):
        """Scalar bool tensor: all ActNorm layers initialised."""
        return tf.reduce_all(tf.stack([a.initialized for a in self.actnorms]))

    def count_params(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.trainable_variables))


def build_flow(image_shape, num_steps: int = 5, hidden_channels: int = 32,
               num_res_blocks: int = 2, mixing: str = "conv1x1",
               num_squeezes: Optional[int] = None, dtype=tf.float32, seed: int = 0) -> Flow:
    """Builds the bijection H (see module docstring); defaults follow the paper (5 steps of two
    32-channel residual blocks). Call under ``strategy.scope()`` for distributed training."""
    return Flow(image_shape, num_steps=num_steps, hidden_channels=hidden_channels,
                num_res_blocks=num_res_blocks, mixing=mixing, num_squeezes=num_squeezes,
                dtype=dtype, seed=seed)


# ---------------------------------------------------------------------------------------------
# Class-conditional Gaussian prior
# ---------------------------------------------------------------------------------------------

class ClassConditionalGaussianPrior(tf.Module):
    """K Gaussians N(mu_k, Sigma_k) over the flattened latent (D = prod(latent_shape)).

    Variables: ``means`` [K, D] initialised N(0, mean_init_std^2) with a fixed seed (classes start
    spread apart: |mu_j - mu_k| ~ sqrt(2 D) * mean_init_std), and
      * covariance='diag': ``log_scales`` [K, D] (init 0), Sigma_k = diag(exp(2 log_scales_k));
      * covariance='full': ``log_diag`` [K, D] (init 0) and ``tril`` [K, D, D] (init 0, only the
        strictly-lower part is used), Sigma_k = L_k L_k^T with
        L_k = tril(tril_k, -1) + diag(exp(log_diag_k)). Costs K * D^2 parameters, so it is only
        allowed for D <= FULL_COVARIANCE_MAX_DIMS (4096), and log-probs cost O(K D^2 B).
    z may be given as [B, *latent_shape] or [B, D].
    """

    def __init__(self, num_classes: int, latent_shape, covariance: str = "diag",
                 mean_init_std: float = 1.0, seed: int = 0, dtype=tf.float32,
                 name: str = "class_conditional_gaussian_prior"):
        super().__init__(name=name)
        dtype = _as_dtype(dtype)
        if covariance not in ("diag", "full"):
            raise ValueError(f"covariance must be 'diag' or 'full', got {covariance!r}")
        self.num_classes = int(num_classes)
        self.latent_shape = tuple(int(v) for v in latent_shape)
        self.num_dims = int(np.prod(self.latent_shape))
        self.covariance = covariance
        self.dtype = dtype
        d, k = self.num_dims, self.num_classes
        if covariance == "full" and d > FULL_COVARIANCE_MAX_DIMS:
            raise ValueError(f"covariance='full' needs D <= {FULL_COVARIANCE_MAX_DIMS}, got D={d}; "
                             "use covariance='diag'")
        rng = np.random.RandomState(seed)
        with tf.name_scope(name):
            self.means = tf.Variable(rng.normal(0.0, mean_init_std, size=(k, d)), dtype=dtype,
                                     name="means")
            if covariance == "diag":
                self.log_scales = tf.Variable(tf.zeros([k, d], dtype), name="log_scales")
            else:
                self.log_diag = tf.Variable(tf.zeros([k, d], dtype), name="log_diag")
                self.tril = tf.Variable(tf.zeros([k, d, d], dtype), name="tril")

    def initialize_from(self, z, labels, min_scale=1e-3):
        """Data-dependent initialisation (eager, cross-replica context): every class mean is the
        mean of its latents in ``z`` (classes absent from the batch take the overall mean) and
        every scale the pooled per-dimension standard deviation. Starting the priors where H's
        initial latents are cuts the early NLL by orders of magnitude compared with random means.
        """
        zf = self._flatten_latent(z).numpy().astype(np.float64)
        labels = np.asarray(labels).astype(np.int64)
        overall = zf.mean(axis=0)
        means = np.tile(overall, (self.num_classes, 1))
        for k in np.unique(labels):
            means[k] = zf[labels == k].mean(axis=0)
        std = np.maximum(np.sqrt(np.mean((zf - means[labels]) ** 2, axis=0)), min_scale)
        self.means.assign(tf.constant(means, self.dtype))
        log_std = np.tile(np.log(std), (self.num_classes, 1))
        if self.covariance == "diag":
            self.log_scales.assign(tf.constant(log_std, self.dtype))
        else:
            self.log_diag.assign(tf.constant(log_std, self.dtype))

    # -- helpers ------------------------------------------------------------------------------
    def _flatten_latent(self, z):
        z = tf.cast(tf.convert_to_tensor(z), self.dtype)
        return tf.reshape(z, [-1, self.num_dims])

    def _unflatten(self, z):
        return tf.reshape(z, [-1, *self.latent_shape])

    def _log_norm_const(self):
        return tf.constant(0.5 * self.num_dims * math.log(2.0 * math.pi), self.dtype)

    def scale_tril(self, classes=None):
        """Cholesky factors L_k ([K, D, D], or gathered by ``classes``) for 'full'."""
        if self.covariance != "full":
            raise ValueError("scale_tril is only defined for covariance='full'")
        off, logd = self.tril, self.log_diag
        if classes is not None:
            off, logd = tf.gather(off, classes), tf.gather(logd, classes)
        return tf.linalg.set_diag(tf.linalg.band_part(off, -1, 0), tf.exp(logd))

    # -- API ----------------------------------------------------------------------------------
    def class_log_probs(self, z):
        """log N(z_b; mu_k, Sigma_k) for all classes: [B, K]."""
        zf = self._flatten_latent(z)
        if self.covariance == "diag":
            inv_var = tf.exp(-2.0 * self.log_scales)                      # [K, D]
            # sum_d (z - mu)^2 / s^2 expanded into matmuls (memory O(B K), not O(B K D)).
            maha = (tf.matmul(tf.square(zf), inv_var, transpose_b=True)
                    - 2.0 * tf.matmul(zf, self.means * inv_var, transpose_b=True)
                    + tf.reduce_sum(tf.square(self.means) * inv_var, axis=1)[None, :])
            logdet = tf.reduce_sum(self.log_scales, axis=1)[None, :]
            return -0.5 * maha - logdet - self._log_norm_const()
        diff = zf[None, :, :] - self.means[:, None, :]                    # [K, B, D]
        sol = tf.linalg.triangular_solve(self.scale_tril(), tf.transpose(diff, [0, 2, 1]),
                                         lower=True)                      # [K, D, B]
        maha = tf.reduce_sum(tf.square(sol), axis=1)                      # [K, B]
        logdet = tf.reduce_sum(self.log_diag, axis=1)[:, None]
        return tf.transpose(-0.5 * maha - logdet) - self._log_norm_const()

    def log_prob(self, z, labels):
        """log N(z_b; mu_{labels_b}, Sigma_{labels_b}) per example: [B]."""
        zf = self._flatten_latent(z)
        labels = tf.cast(labels, tf.int32)
        mu = tf.gather(self.means, labels)
        if self.covariance == "diag":
            log_s = tf.gather(self.log_scales, labels)
            eps = (zf - mu) * tf.exp(-log_s)
            return (-0.5 * tf.reduce_sum(tf.square(eps), axis=1) - tf.reduce_sum(log_s, axis=1)
                    - self._log_norm_const())
        # Full: solve only for the classes present in the batch.
        uniq, idx = tf.unique(labels)
        scale = self.scale_tril(uniq)                                     # [U, D, D]
        diff = zf[None, :, :] - tf.gather(self.means, uniq)[:, None, :]   # [U, B, D]
        sol = tf.linalg.triangular_solve(scale, tf.transpose(diff, [0, 2, 1]), lower=True)
        maha_ub = tf.reduce_sum(tf.square(sol), axis=1)                   # [U, B]
        maha = tf.gather(tf.transpose(maha_ub), idx[:, None], batch_dims=1)[:, 0]
        logdet = tf.reduce_sum(tf.gather(self.log_diag, labels), axis=1)
        return -0.5 * maha - logdet - self._log_norm_const()

    def mixture_log_prob(self, z):
        """Unconditional log p(z) = logsumexp_k log N(z; mu_k, Sigma_k) + log(1/K): [B]."""
        return (tf.reduce_logsumexp(self.class_log_probs(z), axis=1)
                - tf.constant(math.log(self.num_classes), self.dtype))

    def mean_and_scale(self, labels):
        """(mean [B, *latent_shape], scale): scale is the std [B, *latent_shape] for 'diag', the
        Cholesky factor [B, D, D] for 'full'."""
        labels = tf.cast(labels, tf.int32)
        mean = self._unflatten(tf.gather(self.means, labels))
        if self.covariance == "diag":
            return mean, self._unflatten(tf.exp(tf.gather(self.log_scales, labels)))
        return mean, self.scale_tril(labels)

    def sample(self, labels, temperature=1.0, seed=None):
        """z ~ N(mu_k, T^2 Sigma_k) per label: [B, *latent_shape]. ``seed``: None (global RNG),
        an int, or a shape-[2] int tensor (stateless, deterministic)."""
        labels = tf.cast(labels, tf.int32)
        shape = tf.stack([tf.size(labels), self.num_dims])
        if seed is None:
            eps = tf.random.normal(shape, dtype=self.dtype)
        else:
            if isinstance(seed, (int, np.integer)):
                seed = [int(seed), 0]
            eps = tf.random.stateless_normal(shape, seed=seed, dtype=self.dtype)
        mu = tf.gather(self.means, labels)
        if self.covariance == "diag":
            noise = tf.exp(tf.gather(self.log_scales, labels)) * eps
        else:
            noise = tf.linalg.matvec(self.scale_tril(labels), eps)
        return self._unflatten(mu + tf.cast(temperature, self.dtype) * noise)


# ---------------------------------------------------------------------------------------------
# Data, loss, metrics
# ---------------------------------------------------------------------------------------------

def dequantize(images, seed=None, rng: Optional[tf.random.Generator] = None,
               dtype=tf.float32, unit_range: bool = False, uniform=None):
    """Uniform dequantisation of 8-bit images: x = (pixel + u) / 256 - 0.5, u ~ U(0, 1).

    Input convention: ``images`` holds integer pixel values 0..255 (uint8, int, or a float tensor
    of integer values), any shape. With ``unit_range=True`` the input is instead a float image in
    [0, 1] holding k/255 values and is first mapped back to ``round(255 * images)``.
    Output is in [-0.5, 0.5) with dtype ``dtype``. Noise: ``seed`` (int or shape-[2] tensor,
    stateless) if given, else ``rng.uniform`` if given, else the global RNG; or the U(0, 1) draws
    themselves as ``uniform`` (same shape as ``images``: the training pipeline's noise).
    """
    dtype = _as_dtype(dtype)
    pixels = tf.cast(images, dtype)
    if unit_range:
        pixels = tf.round(pixels * 255.0)
    shape = tf.shape(pixels)
    if uniform is not None:
        u = tf.cast(uniform, dtype)
    elif seed is not None:
        if isinstance(seed, (int, np.integer)):
            seed = [int(seed), 0]
        u = tf.random.stateless_uniform(shape, seed=seed, dtype=dtype)
    elif rng is not None:
        u = rng.uniform(shape, dtype=dtype)
    else:
        u = tf.random.uniform(shape, dtype=dtype)
    return (pixels + u) / 256.0 - 0.5


def to_pixels(x):
    """Inverse of `dequantize` up to the noise: x in [-0.5, 0.5] -> uint8 pixels 0..255."""
    x = tf.convert_to_tensor(x)
    return tf.cast(tf.clip_by_value(tf.floor((x + 0.5) * 256.0), 0.0, 255.0), tf.uint8)


@tf.autograph.experimental.do_not_convert
def nll_loss(flow: Flow, prior: ClassConditionalGaussianPrior, x, labels=None):
    """Per-example negative log-likelihood (nats) of the continuous x in [-0.5, 0.5]:
    -[log N(H(x); mu_k, Sigma_k) + log|det dH/dx|] with k = labels; if ``labels`` is None the
    uniform mixture over classes (`ClassConditionalGaussianPrior.mixture_log_prob`) is used."""
    z, log_det = flow.forward(x)
    log_pz = prior.mixture_log_prob(z) if labels is None else prior.log_prob(z, labels)
    return losses.flow_nll(log_pz, log_det)


def bits_per_dim(nll_nats, num_dims: int, num_bins: int = 256):
    """Bits per dimension of the 8-bit data from the NLL (nats) of the dequantised x.

    With y = pixel + u in [0, 256)^D and x = y / 256 - 0.5 (see `dequantize`), the change of
    variables gives p_y(y) = p_x(x) * |dx/dy| = p_x(x) * 256^-D, so
    -log p_y(y) = nll_x + D ln 256, and by Jensen -log P(pixels) <= E_u[-log p_y(pixels + u)].
    Hence  bpd = (nll_x + D ln 256) / (D ln 2)  (an upper bound on the discrete bpd).
    """
    nll = tf.convert_to_tensor(nll_nats)
    d = tf.cast(num_dims, nll.dtype)
    return (nll + d * math.log(num_bins)) / (d * math.log(2.0))
