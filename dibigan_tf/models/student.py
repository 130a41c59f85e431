"""The student matcher F^S (section 3.3): a ResNet with named intermediate outputs F^S_j.

The paper uses ResNet-50. `build_student` gives the ResNet family by depth: 50/101 use bottleneck
blocks (3,4,6,3)/(3,4,23,3) with widths 64..512 (x4), 18/34 basic blocks; `depth="small"` is a
three-stage basic-block ResNet sized for 32x32 digits and laptop CPUs. `width` scales every stage.
The model returns a list: the output of every stage (the taps F^S_j of Eq. 7, outputs named
`tap_1` ... `tap_n`) then the embedding (`embedding`).
Inputs are floats in [-1, 1].
"""
from __future__ import annotations

from dibigan_tf.keras_compat import keras

RESNET_LAYOUTS = {
    # depth: (blocks per stage, bottleneck)
    "small": ((1, 1, 1), False),
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
}


def _bn(name):
    # Synchronized across replicas, so a MirroredStrategy step equals a single-device step.
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=True,
                                           name=name)


def _basic_block(x, filters, stride, name):
    shortcut = x
    y = keras.layers.Conv2D(filters, 3, stride, padding="same", use_bias=False,
                            name=name + "_conv1")(x)
    y = keras.layers.ReLU(name=name + "_relu1")(_bn(name + "_bn1")(y))
    y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name + "_conv2")(y)
    y = _bn(name + "_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, stride, use_bias=False,
                                       name=name + "_proj")(x)
        shortcut = _bn(name + "_proj_bn")(shortcut)
    return keras.layers.ReLU(name=name + "_out")(keras.layers.Add(name=name + "_add")([y, shortcut]))


def _bottleneck_block(x, filters, stride, name):
    shortcut = x
    y = keras.layers.Conv2D(filters, 1, use_bias=False, name=name + "_conv1")(x)
    y = keras.layers.ReLU(name=name + "_relu1")(_bn(name + "_bn1")(y))
    y = keras.layers.Conv2D(filters, 3, stride, padding="same", use_bias=False,
                            name=name + "_conv2")(y)
    y = keras.layers.ReLU(name=name + "_relu2")(_bn(name + "_bn2")(y))
    y = keras.layers.Conv2D(4 * filters, 1, use_bias=False, name=name + "_conv3")(y)
    y = _bn(name + "_bn3")(y)
    if stride != 1 or x.shape[-1] != 4 * filters:
        shortcut = keras.layers.Conv2D(4 * filters, 1, stride, use_bias=False,
                                       name=name + "_proj")(x)
        shortcut = _bn(name + "_proj_bn")(shortcut)
    return keras.layers.ReLU(name=name + "_out")(keras.layers.Add(name=name + "_add")([y, shortcut]))


def build_student(input_shape, embedding_dim, depth="small", width=32, name="student"):
    """ResNet student; returns a keras.Model images -> [tap_1, ..., tap_n, embedding].

    width: channels of the first stage (64 in the standard ResNets); stage k has width * 2**k.
    The stem follows the input size: up to 32 pixels (digits) a 3x3 stride-1 convolution, up to
    64 (CPU face runs) a 3x3 stride-2 one, both without max-pool (so the first stage works at
    32x32 either way: 4x fewer operations than stride 1 at 64x64, as the standard ResNet's stem
    also divides by 4); larger inputs (112, 128, 224 as in the paper) the standard 7x7 stride-2
    convolution and 3x3 stride-2 max-pool.
    """
    key = depth if depth == "small" else int(depth)
    if key not in RESNET_LAYOUTS:
        raise ValueError(f"unknown student depth {depth!r}; choose from {list(RESNET_LAYOUTS)}")
    layout, bottleneck = RESNET_LAYOUTS[key]
    block = _bottleneck_block if bottleneck else _basic_block
    inputs = keras.Input(input_shape, name="images")
    if input_shape[0] <= 64:
        stride = 1 if input_shape[0] <= 32 else 2
        x = keras.layers.Conv2D(width, 3, stride, padding="same", use_bias=False,
                                name="stem_conv")(inputs)
        x = keras.layers.ReLU(name="stem_relu")(_bn("stem_bn")(x))
    else:
        x = keras.layers.Conv2D(width, 7, 2, padding="same", use_bias=False,
                                name="stem_conv")(inputs)
        x = keras.layers.ReLU(name="stem_relu")(_bn("stem_bn")(x))
        x = keras.layers.MaxPool2D(3, 2, padding="same", name="stem_pool")(x)
    taps = []
    for stage, blocks in enumerate(layout):
        filters = width * 2 ** stage
        for b in range(blocks):
            stride = 2 if (b == 0 and stage > 0) else 1
            x = block(x, filters, stride, f"stage{stage + 1}_block{b + 1}")
        # F^S_j of Eq. 7, named tap_1 ... tap_n (weightless: old checkpoints still load)
        # (float32 outputs under a mixed precision policy: training/precision.py)
        taps.append(keras.layers.Activation("linear", dtype="float32",
                                            name=f"tap_{stage + 1}")(x))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    embedding = keras.layers.Dense(embedding_dim, dtype="float32", name="embedding")(x)
    return keras.Model(inputs, taps + [embedding], name=name)
