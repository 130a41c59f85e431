"""The digits matcher: LeNet, the matcher F of the paper's ablation (section 4), whose
penultimate layer gives the 1x1024 feature vectors that the generator reconstructs from; the
network and the adapter that puts a trained one behind the matcher interface."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from dibigan_tf.keras_compat import keras
from dibigan_tf.data.images import uint8_to_unit
from dibigan_tf.matchers.base import Matcher

FEATURE_LAYER = "features"


def build_lenet(input_shape=(32, 32, 1), num_classes=10, feature_dim=1024, name="lenet"):
    """LeNet-5 lineage: two 5x5 conv + max-pool stages, a `feature_dim` fully connected layer
    (ReLU; the embedding), dropout and a softmax classifier. Inputs are floats in [-1, 1]."""
    inputs = keras.Input(input_shape, name="images")
    x = keras.layers.Conv2D(32, 5, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPool2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(64, 5, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPool2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    features = keras.layers.Dense(feature_dim, activation="relu", name=FEATURE_LAYER)(x)
    x = keras.layers.Dropout(0.5, name="dropout")(features)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def feature_model(classifier):
    """The embedding part of a LeNet classifier (images -> 1024-D features)."""
    return keras.Model(classifier.input, classifier.get_layer(FEATURE_LAYER).output,
                       name=classifier.name + "_features")


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
