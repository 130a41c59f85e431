"""Training the digits matcher F (LeNet) on the training split. After this stage F is only ever
used as a blackbox (images in, features out) through the matcher interface."""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from dibigan_tf.data.augment import SHIFT_NOISE, random_shift
from dibigan_tf.data.images import uint8_to_unit
from dibigan_tf.matchers.lenet import build_lenet
from dibigan_tf.training.common import Stage, build_optimizer
from dibigan_tf.training.loops import distributed_step, run_phase

MODEL_FILE = "lenet.keras"


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
