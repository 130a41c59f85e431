"""The digits matcher: a trained LeNet behind the matcher interface."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from dibigan_tf.keras_compat import keras
from dibigan_tf.matchers.base import Matcher
from dibigan_tf.models.lenet import feature_model


def uint8_to_unit(images):
    """uint8 pixels 0..255 -> float32 in [-1, 1] (the networks' input range)."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0


class LeNetMatcher(Matcher):
    name = "lenet"
    differentiable = True

    def __init__(self, classifier: keras.Model, batch_size: int = 500):
        self._features = feature_model(classifier)
        self._batch_size = batch_size
        self._call = tf.function(lambda x: self._features(uint8_to_unit(x), training=False),
                                 reduce_retracing=True)

    @classmethod
    def load(cls, path: str, **kwargs):
        return cls(keras.models.load_model(path, compile=False), **kwargs)

    @property
    def input_shape(self):
        return tuple(int(d) for d in self._features.input_shape[1:])

    @property
    def embedding_dim(self) -> int:
        return int(self._features.output_shape[-1])

    def _embed(self, images):
        return np.concatenate([self._call(tf.constant(images[i:i + self._batch_size])).numpy()
                               for i in range(0, len(images), self._batch_size)])

    def tf_embed(self, images):
        return self._features(images, training=False)

    def tf_outputs(self, images):
        """[pool1, pool2, features]: the two convolution stages as the taps F_j of Eq. 7."""
        if not hasattr(self, "_taps"):
            f = self._features
            self._taps = keras.Model(f.input, [f.get_layer("pool1").output,
                                               f.get_layer("pool2").output, f.output])
        return self._taps(images, training=False)
