"""More images for the attacker: fixed, seeded random affine copies of its training images.

In blackbox mode the attacker owns a set of images and may query the matcher F on them. A copy of
a training digit that is slightly rotated, scaled, sheared and moved is one more image of the same
identity (class): queried through F once, like every image (the feature store keys images by
content), it gives one more (image, feature) pair for the student F^S and for G. The copies are
drawn once from `seed` and never change, so a resumed run queries nothing new.

The transform is about the image centre (MNIST digits are centred by their centre of mass), with
bilinear resampling: rotation in [-max_rotation, max_rotation] degrees, isotropic scale in
[1 - max_scale, 1 + max_scale], horizontal shear in [-max_shear, max_shear] and a translation of
up to max_shift pixels in each direction.

`random_shift` is the other augmentation: a whole-pixel translation of a training batch inside
the step (F^S, LeNet and H), drawn per global batch by the input pipeline.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from PIL import Image

from dibigan_tf.data.base import DataError, ImageSet


def random_affine_params(rng, max_rotation=12.0, max_scale=0.1, max_shear=0.15, max_shift=1.0):
    """One draw: (rotation radians, scale, shear, dx, dy)."""
    return (math.radians(rng.uniform(-max_rotation, max_rotation)),
            1.0 + rng.uniform(-max_scale, max_scale),
            rng.uniform(-max_shear, max_shear),
            rng.uniform(-max_shift, max_shift),
            rng.uniform(-max_shift, max_shift))


def affine_image(image, rotation, scale, shear, dx, dy):
    """Applies the forward map p' = c + A (p - c) + t to one uint8 [H, W, C] image.

    A = scale * R(rotation) @ [[1, shear], [0, 1]]; PIL wants the inverse map (output pixel ->
    input pixel), which is computed here. PIL puts pixel centres at half-integers, so the image
    centre is (W/2, H/2) in its coordinates.
    """
    h, w, c = image.shape
    cx, cy = w / 2.0, h / 2.0
    cos, sin = math.cos(rotation), math.sin(rotation)
    a = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]]) * scale
    inv = np.linalg.inv(a)
    offset = np.array([cx, cy]) - inv @ (np.array([cx, cy]) + np.array([dx, dy]))
    coeffs = (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])
    channels = []
    for k in range(c):
        pil = Image.fromarray(image[:, :, k], mode="L")
        out = pil.transform((w, h), Image.Transform.AFFINE, coeffs,
                            resample=Image.Resampling.BILINEAR, fillcolor=0)
        channels.append(np.asarray(out, dtype=np.uint8))
    return np.stack(channels, axis=-1)


def mirror(images) -> np.ndarray:
    """Horizontal mirror of [n, h, w, c] images (a contiguous copy, so a feature store hashes
    and stores it as an image of its own)."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [n, h, w, c], got shape {images.shape}")
    return np.ascontiguousarray(images[:, :, ::-1])


def affine_copies(images: ImageSet, copies: int, seed: int, mirror_chance: float = 0.0,
                  mix_chance: float = 0.0, **ranges) -> ImageSet:
    """`copies` random affine copies of every image (copy-major order: all images' first copy,
    then all second copies...), with the labels of their sources. copies=0 gives an empty set.

    mirror_chance: the chance that a copy is also mirrored left-right (a face's mirror is another
    aligned photo of the same person). mix_chance: the chance that a copy is blended with another
    copy, drawn at random from all copies, at a weight uniform in [0, 0.5) on the other (mixup
    of two photos; the copy keeps its own label, the larger share). The matcher's answers on
    such in-between images teach the student what F does between faces, where G's images lie
    while it trains. Both are drawn from generators of their own, so the affine copies of a
    seed are the same whatever the two chances are.
    """
    if copies < 0:
        raise DataError(f"the number of augmented copies must be >= 0, got {copies}")
    for name, value in (("mirror", mirror_chance), ("mix", mix_chance)):
        if not 0.0 <= value <= 1.0:
            raise DataError(f"the {name} chance of the augmented copies must be in [0, 1], "
                            f"got {value}")
    rng = np.random.default_rng([seed, 7919])
    n = len(images)
    out = np.zeros((copies * n,) + images.image_shape, np.uint8)
    for k in range(copies):
        for i in range(n):
            out[k * n + i] = affine_image(images.images[i], *random_affine_params(rng, **ranges))
    if mirror_chance > 0 and len(out):
        flip = np.random.default_rng([seed, 7919, 1]).random(len(out)) < mirror_chance
        out[flip] = mirror(out[flip])
    if mix_chance > 0 and len(out):
        draw = np.random.default_rng([seed, 7919, 2])
        blend = np.flatnonzero(draw.random(len(out)) < mix_chance)
        partner = draw.integers(0, len(out), len(out))[blend]
        weight = draw.uniform(0.0, 0.5, len(out))[blend].reshape((-1,) + (1,) * (out.ndim - 1))
        # only the blended copies, in float (all of them at once would hold every copy in
        # float64); the partners are read before any copy is overwritten
        mixed = (1.0 - weight) * out[blend] + weight * out[partner]
        out[blend] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return ImageSet(out, np.tile(images.labels, copies), list(images.class_names))


def concatenate(*sets: ImageSet) -> ImageSet:
    """One ImageSet from several with the same class names and image shape."""
    first = sets[0]
    for other in sets[1:]:
        if other.class_names != first.class_names or other.image_shape != first.image_shape:
            raise DataError("cannot join image sets with different classes or image shapes")
    return ImageSet(np.concatenate([s.images for s in sets]),
                    np.concatenate([s.labels for s in sets]), list(first.class_names))


# the input pipeline's draw for random_shift: one (dy, dx) pair per global batch
SHIFT_NOISE = {"noise_shift": ((2,), "uniform_per_batch")}


def random_shift(images, max_shift, uniform, background=-1.0):
    """Random translation by up to `max_shift` pixels (padding with `background`: -1 for images
    in [-1, 1], 0 for pixel values), one shift per batch (a single crop: per-example shifts
    through map_fn cost more than the step they feed).

    uniform: the batch's SHIFT_NOISE draws ([batch, 2] in [0, 1), every row the same, so every
    replica of a split global batch shifts alike)."""
    if max_shift <= 0:
        return images
    padded = tf.pad(images, [[0, 0], [max_shift, max_shift], [max_shift, max_shift], [0, 0]],
                    constant_values=background)
    offsets = tf.cast(tf.floor(uniform[0] * (2 * max_shift + 1)), tf.int32)
    offsets = tf.minimum(offsets, 2 * max_shift)
    shape = tf.shape(images)
    return tf.slice(padded, tf.stack([0, offsets[0], offsets[1], 0]), shape)
