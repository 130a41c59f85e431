"""Steps are traced without AutoGraph, in the function and in the Keras layers it calls: a branch
on a tensor is then an error at trace time (AutoGraph would have rewritten it), and a step built
by distributed_step still trains and traces once."""
import numpy as np
import pytest
import tensorflow as tf

from dibigan_tf.keras_compat import keras
from dibigan_tf.training.common import make_strategy
from dibigan_tf.training.loops import distributed_step, graph_function


class _BranchOnTensor(keras.layers.Layer):
    def call(self, x):
        if tf.reduce_sum(x) > 0:      # AutoGraph would turn this into tf.cond
            return x
        return -x


def test_no_autograph_in_the_function_or_in_its_keras_layers():
    def branch(x):
        if tf.reduce_sum(x) > 0:
            return x
        return -x

    with pytest.raises(TypeError, match="tf.Tensor"):
        graph_function(branch)(tf.constant([1.0]))
    layer = _BranchOnTensor()
    assert float(tf.function(lambda x: layer(x))(tf.constant([-2.0]))[0]) == 2.0   # AutoGraph on
    with pytest.raises(TypeError, match="tf.Tensor"):
        graph_function(lambda x: layer(x))(tf.constant([-2.0]))


def test_distributed_step_trains_and_traces_once():
    strategy = make_strategy("default")
    with strategy.scope():
        model = keras.Sequential([keras.layers.Dense(1, use_bias=False)])
        model.build((None, 2))
        model.layers[0].kernel.assign([[1.0], [1.0]])
        opt = keras.optimizers.SGD(0.1)
        opt.build(model.trainable_variables)       # as build_optimizer does: no slot made in a trace

    def replica_step(batch):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(model(batch["x"]) - 1.0)) / 4.0
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return {"loss": loss}

    step = distributed_step(strategy, replica_step)
    x = tf.constant(np.ones((4, 2), np.float32))
    losses = [float(step({"x": x})["loss"]) for _ in range(3)]
    assert losses[0] == pytest.approx(1.0)          # (1 + 1 - 1)^2 per row
    assert losses[2] < losses[1] < losses[0]
    assert step.trace_counter["traces"] == 1

    # the replica function is not converted either, under the default or a mirrored strategy
    for strat in (strategy, tf.distribute.MirroredStrategy(["/cpu:0"])):
        branching = distributed_step(strat, lambda batch: {"x": _BranchOnTensor()(batch["x"])})
        with pytest.raises(TypeError, match="tf.Tensor"):
            branching({"x": x})
