"""Progressive generators of DiBiGAN (paper sections 3.4 and 4).

Two generators share the same progressive synthesis network (PO-GAN / PGGAN, Karras et al.):

* :class:`FeatureConditionalGenerator` -- DiBiGAN's G.  The random variable ``v`` is the direct
  input of the synthesis network; the matcher feature ``f = F(x)`` goes through a mapping branch
  of ``mapping_layers`` (8) fully connected layers giving a style ``w``, which is injected at
  every scale with AdaIN (every AdaIN has its own affine from ``w``).
* :class:`ProgressiveGenerator` -- the PO-GAN baseline of configurations (A)-(C): PixelNorm
  instead of AdaIN, and ``concat(f, noise)`` (pixel-normalised) as its only, direct input.

Call convention (both generators)::

    images = generator(v, f, stage=s, alpha=a)      # or generator(v, f, s, a)
    images = generator([v, f], stage=s, alpha=a)    # equivalent list form

* ``v``: ``[B, latent_dim]`` random variable / noise.  For a ``ProgressiveGenerator`` with
  ``latent_dim == 0`` pass ``None`` or a ``[B, 0]`` tensor.
* ``f``: ``[B, feature_dim]`` matcher feature.
* ``stage``: a *Python* int in ``[0, num_blocks)`` (default: the last stage).  It selects the graph structure, so each stage
  is traced separately by ``tf.function`` (keep it a Python constant, not a tensor).
* ``alpha``: fade-in weight in ``[0, 1]`` (scalar; pass a ``tf`` tensor / variable inside
  ``tf.function`` to avoid retracing).  For ``stage > 0``::

      out = lerp(upsample2x(to_rgb[stage-1](h[stage-1])), to_rgb[stage](h[stage]), alpha)

  and at ``stage == 0`` ``alpha`` is ignored (``out = to_rgb[0](h[0])``).  ``alpha=1`` (the
  default) means "no fade-in".
* Output: ``[B, R, R, image_channels]`` with ``R = start_resolution * 2**stage``; linear values
  (no tanh; the training data is in ``[-1, 1]``).

All variables of all blocks are created at construction time (``build_all()``), so
``generator.trainable_variables`` holds every block from the start and a ``tf.train.Checkpoint``
can be restored before the first call.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from dibigan_tf.keras_compat import keras
from dibigan_tf.models.layers import (
    AdaIN,
    EqualizedConv2D,
    EqualizedDense,
    PixelNorm,
    Upsample2x,
    leaky_relu,
    lerp,
)

__all__ = [
    "default_channels",
    "MappingNetwork",
    "SynthesisBlock",
    "FeatureConditionalGenerator",
    "ProgressiveGenerator",
    "build_generator",
    "GENERATOR_KINDS",
]


def default_channels(num_blocks: int, max_channels: int = 256, base: int = 512,
                     min_channels: int = 8) -> tuple:
    """Channels per block, ``min(max_channels, base // 2**i)``: (256, 256, 128, 64, 32) for 5."""
    return tuple(int(max(min_channels, min(max_channels, base // 2 ** i)))
                 for i in range(num_blocks))


def _check_stage(stage, num_blocks: int) -> int:
    if isinstance(stage, (bool, np.bool_)) or not isinstance(stage, (int, np.integer)):
        raise TypeError(
            f"stage must be a Python int (it selects the graph structure), got {type(stage)!r}: "
            f"{stage!r}. Use a separate tf.function trace per stage.")
    stage = int(stage)
    if not 0 <= stage < num_blocks:
        raise ValueError(f"stage must be in [0, {num_blocks}), got {stage}.")
    return stage


class MappingNetwork(keras.layers.Layer):
    """Feature-conditional branch: ``PixelNorm(f)`` -> ``num_layers`` x EqualizedDense + lReLU."""

    def __init__(self, num_layers=8, units=256, lr_mul=0.01, normalize_input=True, **kwargs):
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError("the mapping network needs at least one layer")
        self.num_layers = int(num_layers)
        self.units = int(units)
        self.lr_mul = float(lr_mul)
        self.normalize_input = bool(normalize_input)
        self.pixel_norm = PixelNorm(name="pixel_norm")
        self.dense_layers = [
            EqualizedDense(self.units, lr_mul=self.lr_mul, activation="lrelu", name=f"dense{i}")
            for i in range(self.num_layers)]

    def build(self, input_shape):
        shape = tf.TensorShape(input_shape)
        for layer in self.dense_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        super().build(input_shape)

    def call(self, inputs):
        x = self.pixel_norm(inputs) if self.normalize_input else inputs
        for layer in self.dense_layers:
            x = layer(x)
        return x

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)[:-1].concatenate([self.units])

    def get_config(self):
        config = super().get_config()
        config.update(num_layers=self.num_layers, units=self.units, lr_mul=self.lr_mul,
                      normalize_input=self.normalize_input)
        return config


class SynthesisBlock(keras.layers.Layer):
    """One resolution of the progressive synthesis network.

    * ``first=True`` (block 0, PGGAN's 4x4 block): ``EqualizedDense(latent -> R*R*C)`` (gain
      sqrt(2)/4 as in PGGAN), reshape to ``[R, R, C]``, lReLU, norm, conv3x3, lReLU, norm.
    * ``first=False``: Upsample2x, conv3x3, lReLU, norm, conv3x3, lReLU, norm.

    ``norm='adain'``: each norm is an :class:`AdaIN` with its own affine from the style ``w``;
    call ``block([x, w])``.  ``norm='pixel'``: each norm is a :class:`PixelNorm`; call ``block(x)``.
    """

    def __init__(self, channels, resolution, first=False, norm="adain", **kwargs):
        super().__init__(**kwargs)
        if norm not in ("adain", "pixel"):
            raise ValueError(f"norm must be 'adain' or 'pixel', got {norm!r}")
        self.channels = int(channels)
        self.resolution = int(resolution)
        self.first = bool(first)
        self.norm = norm
        if self.first:
            self.dense = EqualizedDense(self.resolution * self.resolution * self.channels,
                                        gain=math.sqrt(2.0) / 4.0, name="dense")
            self.upsample = None
            self.conv0 = None
        else:
            self.dense = None
            self.upsample = Upsample2x(name="upsample")
            self.conv0 = EqualizedConv2D(self.channels, 3, activation="lrelu", name="conv0")
        self.conv1 = EqualizedConv2D(self.channels, 3, activation="lrelu", name="conv1")
        if norm == "adain":
            self.norm0 = AdaIN(name="adain0")
            self.norm1 = AdaIN(name="adain1")
        else:
            self.norm0 = PixelNorm(name="pixel_norm0")
            self.norm1 = PixelNorm(name="pixel_norm1")

    def _split(self, inputs):
        if self.norm == "adain":
            x, w = inputs
            return x, w
        return inputs, None

    def build(self, input_shape):
        if self.norm == "adain":
            x_shape, w_shape = [tf.TensorShape(s) for s in input_shape]
        else:
            x_shape, w_shape = tf.TensorShape(input_shape), None
        batch = x_shape[0]
        r, c = self.resolution, self.channels
        feat_shape = tf.TensorShape([batch, r, r, c])
        if self.first:
            self.dense.build(x_shape)
        else:
            self.conv0.build(tf.TensorShape([batch, r, r, x_shape[-1]]))
        self.conv1.build(feat_shape)
        if self.norm == "adain":
            self.norm0.build([feat_shape, w_shape])
            self.norm1.build([feat_shape, w_shape])
        super().build(input_shape)

    def _norm(self, layer, x, w):
        return layer([x, w]) if self.norm == "adain" else layer(x)

    def call(self, inputs):
        x, w = self._split(inputs)
        r, c = self.resolution, self.channels
        if self.first:
            x = self.dense(x)
            x = tf.reshape(x, [-1, r, r, c])
            x = leaky_relu(x)
        else:
            x = self.upsample(x)
            x = self.conv0(x)
        x = self._norm(self.norm0, x, w)
        x = self.conv1(x)
        x = self._norm(self.norm1, x, w)
        return x

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, resolution=self.resolution, first=self.first,
                      norm=self.norm)
        return config


class ProgressiveStages:
    """The stage arithmetic G and D share: stage ``s`` works at ``start_resolution * 2**s`` and
    the last of ``num_blocks`` stages at the full resolution. Needs ``start_resolution`` and
    ``num_blocks`` attributes."""

    @property
    def num_stages(self) -> int:
        return self.num_blocks

    @property
    def max_resolution(self) -> int:
        return self.resolution(self.num_blocks - 1)

    def resolution(self, stage: int) -> int:
        """G's output and D's input resolution at ``stage``: ``start_resolution * 2**stage``."""
        return self.start_resolution * 2 ** int(stage)

    @staticmethod
    def _block_channels(num_blocks: int, channels: Sequence[int] | None) -> tuple[int, ...]:
        """The feature maps of each of ``num_blocks`` blocks: ``channels`` checked, or
        ``default_channels(num_blocks)``."""
        if num_blocks < 1:
            raise ValueError("num_blocks must be >= 1")
        if channels is None:
            channels = default_channels(num_blocks)
        channels = tuple(int(c) for c in channels)
        if len(channels) != num_blocks:
            raise ValueError(f"channels must have one entry per block ({num_blocks}), got {channels}")
        return channels


class _ProgressiveSynthesisBase(ProgressiveStages, keras.Model):
    """Shared progressive synthesis machinery (blocks, to-RGB layers, fade-in, helpers)."""

    _norm = "adain"

    def __init__(self, feature_dim, latent_dim=128, start_resolution=4, num_blocks=5,
                 channels: Sequence[int] | None = None, image_channels=3, **kwargs):
        super().__init__(**kwargs)
        channels = self._block_channels(num_blocks, channels)
        self.feature_dim = int(feature_dim)
        self.latent_dim = int(latent_dim)
        self.start_resolution = int(start_resolution)
        self.num_blocks = int(num_blocks)
        self.channels = channels
        self.image_channels = int(image_channels)
        self.blocks = [
            SynthesisBlock(channels[i], self.resolution(i), first=(i == 0), norm=self._norm,
                           name=f"block{i}")
            for i in range(self.num_blocks)]
        self.to_rgb = [
            EqualizedConv2D(self.image_channels, 1, gain=1.0, name=f"to_rgb{i}")
            for i in range(self.num_blocks)]

    # ----------------------------------------------------------------------------- helpers
    def _input_dim(self) -> int:
        raise NotImplementedError

    def _block_input_shapes(self, i, batch=None):
        raise NotImplementedError

    def _build_synthesis(self):
        for i, block in enumerate(self.blocks):
            block.build(self._block_input_shapes(i))
            r = self.resolution(i)
            self.to_rgb[i].build(tf.TensorShape([None, r, r, self.channels[i]]))

    def build_all(self):
        """Create every variable of every block (called by the constructor)."""
        raise NotImplementedError

    def _extra_variables(self):
        return []

    def variables_for_stage(self, stage: int, fade_in: bool = True):
        """Trainable variables used at ``stage``.

        Blocks ``0..stage``, ``to_rgb[stage]``, ``to_rgb[stage-1]`` (if ``stage > 0`` and
        ``fade_in``) and, for the feature-conditional G, the mapping branch.
        """
        stage = _check_stage(stage, self.num_blocks)
        variables = list(self._extra_variables())
        for i in range(stage + 1):
            variables += self.blocks[i].trainable_variables
        if stage > 0 and fade_in:
            variables += self.to_rgb[stage - 1].trainable_variables
        variables += self.to_rgb[stage].trainable_variables
        return variables

    # ----------------------------------------------------------------------------- call
    def _parse_inputs(self, inputs, f):
        if f is None:
            if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
                raise ValueError("call as generator(v, f, stage, alpha) or generator([v, f], ...)")
            v, f = inputs
        else:
            v = inputs
        f = tf.cast(f, self.compute_dtype)
        if v is not None:
            v = tf.cast(v, self.compute_dtype)
        return v, f

    def _run_blocks(self, v, f, stage):
        """Return ``[h_0, ..., h_stage]`` (the hidden activations of blocks 0..stage)."""
        raise NotImplementedError

    def hidden_states(self, v, f, stage):
        """Hidden activations ``[h_0, ..., h_stage]`` of the synthesis blocks."""
        stage = _check_stage(stage, self.num_blocks)
        v, f = self._parse_inputs(v, f)
        return self._run_blocks(v, f, stage)

    def call(self, inputs, f=None, stage=None, alpha=1.0):
        if stage is None:
            stage = self.num_blocks - 1
        stage = _check_stage(stage, self.num_blocks)
        v, f = self._parse_inputs(inputs, f)
        hs = self._run_blocks(v, f, stage)
        # images leave G in float32 whatever the layers compute in (training/precision.py)
        new = tf.cast(self.to_rgb[stage](hs[stage]), tf.float32)
        if stage == 0:
            return new
        if alpha is None:
            alpha = 1.0
        old = tf.cast(self.blocks[stage].upsample(self.to_rgb[stage - 1](hs[stage - 1])),
                      tf.float32)
        return lerp(old, new, tf.cast(alpha, tf.float32))

    def get_config(self):
        return dict(feature_dim=self.feature_dim, latent_dim=self.latent_dim,
                    start_resolution=self.start_resolution, num_blocks=self.num_blocks,
                    channels=list(self.channels), image_channels=self.image_channels,
                    name=self.name)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


class FeatureConditionalGenerator(_ProgressiveSynthesisBase):
    """DiBiGAN's feature-conditional generator (see the module docstring for the call).

    Args:
      feature_dim: dimension of the matcher feature ``f``.
      latent_dim: dimension of the random variable ``v`` (direct input of the synthesis).
      start_resolution: resolution of block 0 (4 for faces, e.g. 8 for 32x32 digits).
      num_blocks: number of synthesis blocks; block ``i`` works at ``start_resolution * 2**i``.
      channels: feature maps per block (default ``default_channels(num_blocks)``).
      mapping_layers, mapping_dim, mapping_lr_mul: the feature-conditional branch.
      image_channels: channels of the output image.
    """

    _norm = "adain"

    def __init__(self, feature_dim, latent_dim=128, start_resolution=4, num_blocks=5,
                 channels: Sequence[int] | None = None, mapping_layers=8, mapping_dim=256,
                 mapping_lr_mul=0.01, image_channels=3, **kwargs):
        kwargs.setdefault("name", "feature_conditional_generator")
        super().__init__(feature_dim=feature_dim, latent_dim=latent_dim,
                         start_resolution=start_resolution, num_blocks=num_blocks,
                         channels=channels, image_channels=image_channels, **kwargs)
        if self.latent_dim < 1:
            raise ValueError("FeatureConditionalGenerator needs latent_dim >= 1 (v is its input)")
        self.mapping_layers = int(mapping_layers)
        self.mapping_dim = int(mapping_dim)
        self.mapping_lr_mul = float(mapping_lr_mul)
        self.mapping = MappingNetwork(self.mapping_layers, self.mapping_dim, self.mapping_lr_mul,
                                      name="mapping")
        self.build_all()

    def _block_input_shapes(self, i, batch=None):
        w_shape = tf.TensorShape([batch, self.mapping_dim])
        if i == 0:
            return [tf.TensorShape([batch, self.latent_dim]), w_shape]
        r = self.resolution(i - 1)
        return [tf.TensorShape([batch, r, r, self.channels[i - 1]]), w_shape]

    def build_all(self):
        self.mapping.build(tf.TensorShape([None, self.feature_dim]))
        self._build_synthesis()
        self.built = True

    def _extra_variables(self):
        return self.mapping.trainable_variables

    def _run_blocks(self, v, f, stage):
        if v is None:
            raise ValueError("FeatureConditionalGenerator needs the random variable v")
        w = self.mapping(f)
        hs = []
        x = v
        for i in range(stage + 1):
            x = self.blocks[i]([x, w])
            hs.append(x)
        return hs

    def get_config(self):
        config = super().get_config()
        config.update(mapping_layers=self.mapping_layers, mapping_dim=self.mapping_dim,
                      mapping_lr_mul=self.mapping_lr_mul)
        return config


class ProgressiveGenerator(_ProgressiveSynthesisBase):
    """PO-GAN baseline: ``PixelNorm(concat(f, v))`` is the only, direct input.

    Same synthesis and call convention as :class:`FeatureConditionalGenerator`, but with
    PixelNorm instead of AdaIN and no mapping branch.  ``latent_dim`` may be 0: then pass
    ``v=None`` or a ``[B, 0]`` tensor.
    """

    _norm = "pixel"

    def __init__(self, feature_dim, latent_dim=128, start_resolution=4, num_blocks=5,
                 channels: Sequence[int] | None = None, image_channels=3, **kwargs):
        kwargs.setdefault("name", "progressive_generator")
        super().__init__(feature_dim=feature_dim, latent_dim=latent_dim,
                         start_resolution=start_resolution, num_blocks=num_blocks,
                         channels=channels, image_channels=image_channels, **kwargs)
        if self.latent_dim < 0:
            raise ValueError("latent_dim must be >= 0")
        self.input_norm = PixelNorm(name="input_pixel_norm")
        self.build_all()

    def _block_input_shapes(self, i, batch=None):
        if i == 0:
            return tf.TensorShape([batch, self.feature_dim + self.latent_dim])
        r = self.resolution(i - 1)
        return tf.TensorShape([batch, r, r, self.channels[i - 1]])

    def build_all(self):
        self._build_synthesis()
        self.built = True

    def _run_blocks(self, v, f, stage):
        if self.latent_dim == 0:
            if v is not None and v.shape[-1] not in (0, None):
                raise ValueError(f"latent_dim is 0 but v has shape {v.shape}")
            x = f
        else:
            if v is None:
                raise ValueError(f"ProgressiveGenerator with latent_dim={self.latent_dim} needs v")
            x = tf.concat([f, v], axis=-1)
        x = self.input_norm(x)
        hs = []
        for i in range(stage + 1):
            x = self.blocks[i](x)
            hs.append(x)
        return hs


GENERATOR_KINDS = {
    "feature_conditional": FeatureConditionalGenerator,
    "pggan": ProgressiveGenerator,
}

_MAPPING_KWARGS = ("mapping_layers", "mapping_dim", "mapping_lr_mul")


def build_generator(kind: str = "feature_conditional", **kwargs):
    """Build a generator: ``kind='feature_conditional'`` (DiBiGAN) or ``'pggan'`` (baseline).

    For ``'pggan'`` the mapping-branch arguments (``mapping_layers``, ``mapping_dim``,
    ``mapping_lr_mul``) are accepted and ignored, so one config dict serves both kinds.
    """
    aliases = {"dibigan": "feature_conditional", "feature-conditional": "feature_conditional",
               "po-gan": "pggan", "pogan": "pggan", "progressive": "pggan"}
    kind = aliases.get(kind, kind)
    if kind not in GENERATOR_KINDS:
        raise ValueError(f"unknown generator kind {kind!r}; choose from {sorted(GENERATOR_KINDS)}")
    if kind == "pggan":
        kwargs = {k: v for k, v in kwargs.items() if k not in _MAPPING_KWARGS}
    return GENERATOR_KINDS[kind](**kwargs)
