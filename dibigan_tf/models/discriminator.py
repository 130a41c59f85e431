"""Progressive discriminator of DiBiGAN (paper section 4, PO-GAN's D).

Blocks are indexed like the generator's: block ``i`` works at ``start_resolution * 2**i`` with
``channels[i]`` feature maps.

* ``from_rgb[i]``: 1x1 EqualizedConv2D(channels[i]) + leaky ReLU.
* block ``i > 0``: conv3x3(channels[i]) + lReLU, conv3x3(channels[i-1]) + lReLU, Downsample2x.
* block 0 (the last one applied): MinibatchStdDev, conv3x3(channels[0]) + lReLU, flatten,
  EqualizedDense(channels[0]) + lReLU, EqualizedDense(1) (linear score).

Call convention::

    scores = discriminator(images, stage, alpha)      # or stage=..., alpha=... keywords

* ``images``: ``[B, R, R, image_channels]`` with ``R = start_resolution * 2**stage``.
* ``stage``: a Python int in ``[0, num_blocks)`` (default: the last; static; each stage is traced separately).
* ``alpha``: fade-in weight in ``[0, 1]`` (scalar; default 1 = no fade-in; ignored at stage 0)::

      h = lerp(from_rgb[stage-1](downsample2x(images)), block[stage](from_rgb[stage](images)), alpha)

  followed by blocks ``stage-1, ..., 0``.
* Returns scores of shape ``[B]`` (float, linear, unbounded).

All variables are created at construction time (``build_all()``).
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from dibigan_tf.keras_compat import keras
from dibigan_tf.models.generator import ProgressiveStages, _check_stage
from dibigan_tf.models.layers import (
    Downsample2x,
    EqualizedConv2D,
    EqualizedDense,
    MinibatchStdDev,
    lerp,
)

__all__ = ["DiscriminatorBlock", "DiscriminatorOutputBlock", "ProgressiveDiscriminator"]


class DiscriminatorBlock(keras.layers.Layer):
    """conv3x3(channels) + lReLU, conv3x3(out_channels) + lReLU, Downsample2x."""

    def __init__(self, channels, out_channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.out_channels = int(out_channels)
        self.conv0 = EqualizedConv2D(self.channels, 3, activation="lrelu", name="conv0")
        self.conv1 = EqualizedConv2D(self.out_channels, 3, activation="lrelu", name="conv1")
        self.downsample = Downsample2x(name="downsample")

    def build(self, input_shape):
        shape = tf.TensorShape(input_shape)
        self.conv0.build(shape)
        self.conv1.build(self.conv0.compute_output_shape(shape))
        super().build(input_shape)

    def call(self, inputs):
        return self.downsample(self.conv1(self.conv0(inputs)))

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, out_channels=self.out_channels)
        return config


class DiscriminatorOutputBlock(keras.layers.Layer):
    """MinibatchStdDev, conv3x3(channels) + lReLU, flatten, Dense(channels) + lReLU, Dense(1).

    Returns ``[B]`` scores.
    """

    def __init__(self, channels, mbstd_group_size=4, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.mbstd_group_size = int(mbstd_group_size)
        self.mbstd = MinibatchStdDev(group_size=self.mbstd_group_size, name="mbstd")
        self.conv = EqualizedConv2D(self.channels, 3, activation="lrelu", name="conv")
        self.dense0 = EqualizedDense(self.channels, activation="lrelu", name="dense0")
        self.dense1 = EqualizedDense(1, gain=1.0, name="dense1")

    def build(self, input_shape):
        shape = tf.TensorShape(input_shape)
        h, w = int(shape[1]), int(shape[2])
        shape = self.mbstd.compute_output_shape(shape)
        self.conv.build(shape)
        self.flat_dim = h * w * self.channels
        self.dense0.build(tf.TensorShape([None, self.flat_dim]))
        self.dense1.build(tf.TensorShape([None, self.channels]))
        super().build(input_shape)

    def call(self, inputs):
        x = self.mbstd(inputs)
        x = self.conv(x)
        x = tf.reshape(x, [-1, self.flat_dim])
        x = self.dense0(x)
        x = self.dense1(x)
        return x[:, 0]

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, mbstd_group_size=self.mbstd_group_size)
        return config


class ProgressiveDiscriminator(ProgressiveStages, keras.Model):
    """Progressive (PO-GAN) discriminator; see the module docstring for the call convention.

    Args:
      start_resolution: resolution of the last block (block 0).
      num_blocks: number of blocks; block ``i`` works at ``start_resolution * 2**i``.
      channels: feature maps per block, same indexing as the generator.
      image_channels: channels of the input images.
      mbstd_group_size: minibatch-stddev group size (falls back when it does not divide B).
    """

    def __init__(self, start_resolution=4, num_blocks=5, channels: Sequence[int] | None = None,
                 image_channels=3, mbstd_group_size=4, **kwargs):
        kwargs.setdefault("name", "progressive_discriminator")
        super().__init__(**kwargs)
        channels = self._block_channels(num_blocks, channels)
        self.start_resolution = int(start_resolution)
        self.num_blocks = int(num_blocks)
        self.channels = channels
        self.image_channels = int(image_channels)
        self.mbstd_group_size = int(mbstd_group_size)
        self.from_rgb = [
            EqualizedConv2D(channels[i], 1, activation="lrelu", name=f"from_rgb{i}")
            for i in range(self.num_blocks)]
        self.blocks = [DiscriminatorOutputBlock(channels[0], self.mbstd_group_size, name="block0")]
        self.blocks += [DiscriminatorBlock(channels[i], channels[i - 1], name=f"block{i}")
                        for i in range(1, self.num_blocks)]
        self.downsample = Downsample2x(name="downsample")
        self.build_all()

    # ----------------------------------------------------------------------------- helpers
    def build_all(self):
        """Create every variable of every block (called by the constructor)."""
        for i in range(self.num_blocks):
            r = self.resolution(i)
            self.from_rgb[i].build(tf.TensorShape([None, r, r, self.image_channels]))
            self.blocks[i].build(tf.TensorShape([None, r, r, self.channels[i]]))
        self.built = True

    def variables_for_stage(self, stage: int, fade_in: bool = True):
        """Trainable variables used at ``stage``: blocks 0..stage, from_rgb[stage] and
        from_rgb[stage-1] (if ``stage > 0`` and ``fade_in``)."""
        stage = _check_stage(stage, self.num_blocks)
        variables = []
        for i in range(stage + 1):
            variables += self.blocks[i].trainable_variables
        variables += self.from_rgb[stage].trainable_variables
        if stage > 0 and fade_in:
            variables += self.from_rgb[stage - 1].trainable_variables
        return variables

    def run_from(self, h, stage):
        """Apply blocks ``stage, stage-1, ..., 0`` to a feature map ``h`` (the output of a
        from-RGB layer at ``stage``); returns ``[B]`` scores."""
        stage = _check_stage(stage, self.num_blocks)
        for i in range(stage, -1, -1):
            h = self.blocks[i](h)
        return h

    # ----------------------------------------------------------------------------- call
    def call(self, inputs, stage=None, alpha=1.0):
        if stage is None:
            stage = self.num_blocks - 1
        stage = _check_stage(stage, self.num_blocks)
        images = tf.cast(inputs, self.compute_dtype)
        h = self.from_rgb[stage](images)
        if stage == 0:
            return tf.cast(self.blocks[0](h), tf.float32)   # scores in float32 (precision.py)
        h = self.blocks[stage](h)
        if alpha is None:
            alpha = 1.0
        old = self.from_rgb[stage - 1](self.downsample(images))
        h = lerp(old, h, tf.cast(alpha, h.dtype))
        for i in range(stage - 1, -1, -1):
            h = self.blocks[i](h)
        return tf.cast(h, tf.float32)

    def get_config(self):
        return dict(start_resolution=self.start_resolution, num_blocks=self.num_blocks,
                    channels=list(self.channels), image_channels=self.image_channels,
                    mbstd_group_size=self.mbstd_group_size, name=self.name)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)
