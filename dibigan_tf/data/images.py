"""Conversions between the pixel formats the project passes around: uint8 pixels (what a
matcher receives and a user sees), float images in [-1, 1] (what the networks take), and image
grids for figures and TensorBoard."""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf


def uint8_to_unit(images):
    """uint8 pixels 0..255 -> float32 in [-1, 1] (the networks' input range)."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """uint8 [n, h, w, c] -> one uint8 grid image [rows*h, columns*w, c] (blank cells black)."""
    n, h, w, c = images.shape
    rows = int(math.ceil(n / columns))
    grid = np.zeros((rows * h, columns * w, c), np.uint8)
    for i in range(n):
        r, k = divmod(i, columns)
        grid[r * h:(r + 1) * h, k * w:(k + 1) * w] = images[i]
    return grid


def to_uint8(images) -> np.ndarray:
    """Float images in [-1, 1] -> uint8 pixels (rounded, clipped), as a real attacker would send."""
    images = np.asarray(images, np.float32)
    return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
