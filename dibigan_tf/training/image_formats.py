"""The image formats of a run: the size F^S, H and G train on, the matcher's input format,
and image grids as PNG arrays."""
from __future__ import annotations

import dataclasses

import numpy as np


from dibigan_tf.config import RunConfig
from dibigan_tf.data.faces import resize_images


def model_images(cfg: RunConfig, images: np.ndarray) -> np.ndarray:
    """The images at the size F^S, H and G train on (`image_size`; 0 keeps the dataset's)."""
    if not cfg.image_size or cfg.image_size == images.shape[1]:
        return images
    return resize_images(images, cfg.image_size)


def matcher_images(matcher, images: np.ndarray) -> np.ndarray:
    """Images in the matcher's input format: resized to its size, and grey <-> RGB when its
    channels differ (G's reconstructions and evaluation images before F sees them)."""
    size, channels = matcher.input_shape[0], matcher.input_shape[-1]
    if images.shape[1] != size:
        images = resize_images(images, size)
    if images.shape[-1] != channels:
        if channels == 1:
            images = np.round(images.astype(np.float32).mean(axis=-1, keepdims=True)
                              ).astype(np.uint8)
        elif images.shape[-1] == 1:
            images = np.repeat(images, channels, axis=-1)
    return images


def resized(cfg: RunConfig, data):
    """`data` with its images at the training size (a copy when they change)."""
    images = model_images(cfg, data.images)
    if images is data.images:
        return data
    return dataclasses.replace(data, images=images)


def grey_or_rgb(grid):
    return grid[..., 0] if grid.shape[-1] == 1 else grid
