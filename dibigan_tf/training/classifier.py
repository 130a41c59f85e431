"""Training the digits matcher F (LeNet) on the training split. After this stage F is only ever
used as a blackbox (images in, features out) through the matcher interface."""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from dibigan_tf.keras_compat import keras
from dibigan_tf.matchers.lenet import uint8_to_unit
from dibigan_tf.models.lenet import build_lenet
from dibigan_tf.training.common import Stage, build_optimizer
from dibigan_tf.training.loops import distributed_step, run_phase

MODEL_FILE = "lenet.keras"


# the input pipeline's draw for random_shift: one (dy, dx) pair per global batch
SHIFT_NOISE = {"noise_shift": ((2,), "uniform_per_batch")}


def random_shift(images, max_shift, uniform, background=-1.0):
    """Random translation by up to `max_shift` pixels (padding with `background`: -1 for images
    in [-1, 1], 0 for pixel values), one shift per batch (a single crop: per-example shifts
    through map_fn cost more than the step they feed).

    uniform: the batch's SHIFT_NOISE draws ([batch, 2] in [0, 1), every row the same, so every
    replica of a split global batch shifts alike)."""
    if max_shift <= 0:
        return images
    padded = tf.pad(images, [[0, 0], [max_shift, max_shift], [max_shift, max_shift], [0, 0]],
                    constant_values=background)
    offsets = tf.cast(tf.floor(uniform[0] * (2 * max_shift + 1)), tf.int32)
    offsets = tf.minimum(offsets, 2 * max_shift)
    shape = tf.shape(images)
    return tf.slice(padded, tf.stack([0, offsets[0], offsets[1], 0]), shape)


def train_lenet(run_dir, strategy, train_images, train_labels, *, feature_dim=1024, epochs=8,
                batch_size=128, learning_rate=1e-3, seed=0, log_every=20, **loop_kwargs):
    """Trains LeNet (or resumes); returns the path of the saved classifier (`lenet.keras`)."""
    path = os.path.join(run_dir, "matcher", MODEL_FILE)
    with strategy.scope():
        model = build_lenet(train_images.shape[1:], int(train_labels.max()) + 1, feature_dim)
    optimizer = build_optimizer(strategy, model.trainable_variables, learning_rate)
    stage = Stage(run_dir, "matcher", strategy, {"model": model, "optimizer": optimizer})
    if stage.is_done() and os.path.exists(path):
        return path
    stage.restore()
    global_batch = batch_size

    def replica_step(batch):
        x = random_shift(uint8_to_unit(batch["images"]), 2, batch["noise_shift"])
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(batch["labels"], logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        correct = tf.cast(tf.equal(tf.argmax(logits, -1), batch["labels"]), tf.float32)
        return {"loss": loss, "accuracy": tf.reduce_sum(correct) / global_batch}

    step = distributed_step(strategy, replica_step)
    total = epochs * len(train_images)
    run_phase(stage, step, {"images": train_images, "labels": train_labels.astype(np.int64)},
              batch_size, total, seed, log_every=log_every, noise=SHIFT_NOISE, **loop_kwargs)
    model.save(path)
    stage.mark_done({"model": path})
    return path
