"""What every data loader shares: the error a person can act on, a set of images with
identities, and a file's content digest."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np


def file_sha1(path: str) -> str:
    """SHA-1 of a file's bytes (hex): what a model file's store key and a cached crop's content
    key name it by."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DataError(ValueError):
    """Bad or missing input data, with a message a person can act on."""


@dataclasses.dataclass
class ImageSet:
    """Images with integer identities.

    images: uint8 [N, H, W, C]; labels: int64 [N] (identity / class index);
    class_names: the name of each label index.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DataError(f"images must be uint8 [N,H,W,C], got {self.images.dtype} "
                            f"{self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.images.shape[0]} images but labels of shape "
                            f"{self.labels.shape}")

    def __len__(self):
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self):
        return tuple(int(d) for d in self.images.shape[1:])

    def subset(self, indices) -> "ImageSet":
        indices = np.asarray(indices)
        return ImageSet(self.images[indices], self.labels[indices], list(self.class_names))
