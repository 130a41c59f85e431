"""The matcher interface F: images in (a batch of uint8 pixels in the matcher's own input format),
embedding vectors out.

A matcher is *whitebox-capable* when it can also be called inside TensorFlow with gradients
(`differentiable` is True and `tf_embed` works). DiBiGAN's blackbox mode never uses that path: the
pipeline talks to F only through `embed`, and only through a `FeatureStore`, so that every image is
sent to F once and every query is counted.
"""
from __future__ import annotations

import abc

import numpy as np


class MatcherError(RuntimeError):
    """A matcher failed or answered something unusable (wrong shape, NaN...)."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (at most 300 characters), for one-line errors."""
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


class Matcher(abc.ABC):
    #: a short stable name, used to key stored features ("lenet", "dlib", ...)
    name: str = "matcher"
    #: whether `tf_embed` gives gradients (whitebox-capable)
    differentiable: bool = False

    @property
    def store_key(self) -> str:
        """A short, filesystem-safe key naming this specific model (not only its kind), so that
        features of two different models never share a feature-store folder."""
        return self.name

    @property
    @abc.abstractmethod
    def input_shape(self):
        """(height, width, channels) of the images `embed` takes."""

    @property
    @abc.abstractmethod
    def embedding_dim(self) -> int:
        """Length of the embedding vectors."""

    @abc.abstractmethod
    def _embed(self, images: np.ndarray) -> np.ndarray:
        """Embeds a uint8 batch [n, h, w, c]; returns float [n, embedding_dim]."""

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Embeds a uint8 batch, checking what goes in and what comes out."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise MatcherError(f"{self.name}: expects uint8 images [n,h,w,c], got "
                               f"{images.dtype} {images.shape}")
        if tuple(images.shape[1:]) != tuple(self.input_shape):
            raise MatcherError(f"{self.name}: expects images of shape {tuple(self.input_shape)},"
                               f" got {tuple(images.shape[1:])}")
        out = np.asarray(self._embed(images), dtype=np.float32)
        if out.shape != (images.shape[0], self.embedding_dim):
            raise MatcherError(f"{self.name}: returned embeddings of shape {out.shape}, expected "
                               f"{(images.shape[0], self.embedding_dim)}")
        if not np.all(np.isfinite(out)):
            bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
            raise MatcherError(f"{self.name}: returned a non-finite embedding (batch row {bad})")
        return out

    def tf_embed(self, images):
        """Differentiable embedding of float images in [-1, 1] (whitebox matchers only)."""
        raise MatcherError(f"{self.name} is a blackbox: it has no differentiable path")

    def tf_outputs(self, images) -> list:
        """[intermediate taps F_j ..., embedding] for L_distill (Eq. 7) in whitebox mode, where F
        takes the place of F^S. Matchers that cannot show their inside give only the embedding
        (Eq. 7 is then its lambda_a cosine term alone)."""
        return [self.tf_embed(images)]


class FixedMatcher(Matcher):
    """A matcher whose input shape, embedding size and store key are set once, at construction
    (`self._input_shape`, `self._dim`, `self._key`)."""

    @property
    def input_shape(self):
        return self._input_shape

    @property
    def embedding_dim(self) -> int:
        return self._dim

    @property
    def store_key(self) -> str:
        return self._key


class WhiteboxNetwork:
    """A differentiable matcher F called like the student F^S: `net(images, training)` takes
    float images in [-1, 1] at the generator's size (resized to F's input size inside the
    graph, so gradients flow) and returns [taps..., embedding].

    embedding_mean: subtracted from the embedding, so that Eq. 7's cosine term compares F's
    outputs in the same centred space a student trained on centred targets works in
    (`--student_center_targets`, training/student.py): on a matcher whose features share one
    dominant direction (dlib's: the mean feature alone has cosine 0.91 to every face) the raw
    cosine barely sees identity, and whitebox would optimise a weaker term than blackbox."""

    def __init__(self, matcher: Matcher, image_shape, embedding_mean=None):
        if not matcher.differentiable:
            raise MatcherError(f"--mode=whitebox needs a differentiable matcher; {matcher.name} "
                               f"is a blackbox (use --mode=blackbox: F^S is distilled from it)")
        if int(image_shape[-1]) != int(matcher.input_shape[-1]):
            raise MatcherError(f"{matcher.name} takes {matcher.input_shape[-1]}-channel images, "
                               f"the data has {image_shape[-1]}")
        self.matcher = matcher
        self.size = tuple(int(d) for d in matcher.input_shape[:2])
        self.resize = tuple(int(d) for d in image_shape[:2]) != self.size
        self.embedding_mean = (None if embedding_mean is None
                               else np.asarray(embedding_mean, np.float32))

    def __call__(self, images, training=False):
        import tensorflow as tf
        if self.resize:
            images = tf.image.resize(images, self.size, method="bilinear")
        outputs = list(self.matcher.tf_outputs(images))
        if self.embedding_mean is not None:
            outputs[-1] = outputs[-1] - tf.constant(self.embedding_mean, outputs[-1].dtype)
        return outputs
