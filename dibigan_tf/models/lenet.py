"""LeNet, the digits matcher F of the paper's ablation (section 4): its penultimate layer gives the
1x1024 feature vectors that the generator reconstructs from."""
from __future__ import annotations

from dibigan_tf.keras_compat import keras

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
