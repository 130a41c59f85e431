"""Training the bijection H with class-conditional Gaussian priors (section 3.2, "Learning the
Bijection H"): maximise log N(H(x); mu_k, Sigma_k) + log|det J| over dequantised 8-bit images."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from dibigan_tf.models.flow import (ClassConditionalGaussianPrior, bits_per_dim, build_flow,
                                    dequantize, nll_loss, to_pixels)
from dibigan_tf.data.augment import SHIFT_NOISE, random_shift
from dibigan_tf.data.images import image_grid
from dibigan_tf.training.common import Stage, build_optimizer, learning_rate_schedule
from dibigan_tf.training.loops import distributed_step, graph_function, run_phase


def make_flow(strategy, image_shape, num_classes, num_steps=5, hidden_channels=32,
              num_res_blocks=2, mixing="conv1x1", covariance="diag", seed=0):
    with strategy.scope():
        flow = build_flow(image_shape, num_steps=num_steps, hidden_channels=hidden_channels,
                          num_res_blocks=num_res_blocks, mixing=mixing, seed=seed)
        prior = ClassConditionalGaussianPrior(num_classes, flow.latent_shape,
                                              covariance=covariance, seed=seed)
    return flow, prior


def class_samples(flow, prior, num_classes, per_class=8, temperature=0.7, seed=0):
    """uint8 grid: one row per class (at most 10), samples of H^-1 from that class's prior."""
    classes = min(num_classes, 10)
    labels = tf.constant(np.repeat(np.arange(classes), per_class), tf.int64)
    z = prior.sample(labels, temperature=temperature, seed=seed)
    x = flow.inverse(tf.reshape(z, [-1] + list(flow.latent_shape)))
    return image_grid(to_pixels(x).numpy(), per_class)


def train_flow(run_dir, strategy, images, labels, num_classes, *, num_steps=5,
               hidden_channels=32, num_res_blocks=2, mixing="conv1x1", covariance="diag",
               epochs=10, batch_size=64, learning_rate=1e-3, lr_decay="cosine", max_shift=0,
               seed=2, log_every=20, jit_compile=False, **loop_kwargs):
    """Trains (or resumes) H and its priors; returns (flow, prior), frozen afterwards.

    lr_decay "cosine" lowers Adam's step from learning_rate to 0 along a half cosine over the
    run's steps (a function of the optimizer's step count, so a resumed run continues the same
    curve). Why: at a constant 1e-3 the paper-size H on the digits was still falling at 100
    epochs and its in-batch bits/dim jumped by 0.1 between logs; the decay settles it in the
    same budget (README, "The bijection H"). "constant" keeps learning_rate throughout.

    H is float32 whatever --mixed_precision says (training/precision.py); jit_compile XLA-compiles
    its step."""
    flow, prior = make_flow(strategy, images.shape[1:], num_classes, num_steps, hidden_channels,
                            num_res_blocks, mixing, covariance, seed)
    variables = flow.trainable_variables + prior.trainable_variables
    schedule = learning_rate_schedule(learning_rate, lr_decay, epochs * len(images), batch_size)
    optimizer = build_optimizer(strategy, variables, schedule)
    stage = Stage(run_dir, "flow", strategy, {"flow": flow, "prior": prior,
                                              "optimizer": optimizer})
    stage.restore()
    if stage.is_done():
        return flow, prior
    if int(stage.step.numpy()) == 0:
        # Data-dependent initialisation, cross-replica context: ActNorm, then the class priors
        # where the initial latents of each class lie.
        first = np.random.default_rng(seed).choice(len(images), min(512, len(images)),
                                                   replace=False)
        x0 = dequantize(tf.constant(images[first]), seed=seed)
        flow.initialize(x0)
        prior.initialize_from(flow.forward(x0)[0], labels[first])
    num_dims = int(np.prod(images.shape[1:]))
    global_batch = batch_size

    def replica_step(batch):
        # the dequantisation noise comes with the global batch (the same on any replica count)
        pixels = tf.cast(batch["images"], tf.float32)
        if max_shift:
            pixels = random_shift(pixels, max_shift, batch["noise_shift"], background=0.0)
        x = dequantize(pixels, uniform=batch["noise_dequant"])
        with tf.GradientTape() as tape:
            nll = nll_loss(flow, prior, x, batch["labels"])
            loss = tf.nn.compute_average_loss(nll, global_batch_size=global_batch) / num_dims
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        bpd = bits_per_dim(nll, num_dims)
        return {"nll_per_dim": loss, "bits_per_dim": tf.reduce_sum(bpd) / global_batch}

    step = distributed_step(strategy, replica_step, jit_compile=jit_compile)

    def on_log(step_number, values):
        stage.scalars({"learning_rate": float(schedule(step_number))
                       if callable(schedule) else schedule}, step_number)
        if step_number % (log_every * 10) == 0:
            stage.images("class_prior_samples", class_samples(flow, prior, num_classes),
                         step_number)

    run_phase(stage, step, {"images": images, "labels": labels.astype(np.int64)}, batch_size,
              epochs * len(images), seed, log_every=log_every, on_log=on_log,
              noise=dict({"noise_dequant": (tuple(images.shape[1:]), "uniform")},
                         **(SHIFT_NOISE if max_shift else {})), **loop_kwargs)
    stage.images("class_prior_samples", class_samples(flow, prior, num_classes))
    stage.mark_done()
    return flow, prior


def evaluate_flow(flow, prior, images, labels, batch_size=250, seed=123):
    """Held-out bits per dimension with the true class prior and with the class mixture.

    labels None: the images' identities have no prior of their own (held-out face identities
    are people H never saw), so only the mixture over the training identities is reported."""
    num_dims = int(np.prod(images.shape[1:]))
    fn = graph_function(lambda x, y: (nll_loss(flow, prior, x, y), nll_loss(flow, prior, x)))
    mix_fn = graph_function(lambda x: nll_loss(flow, prior, x))
    true_bpd, mix_bpd = [], []
    for i in range(0, len(images), batch_size):
        x = dequantize(tf.constant(images[i:i + batch_size]), seed=seed + i)
        if labels is None:
            mix_bpd.append(bits_per_dim(mix_fn(x), num_dims).numpy())
            continue
        nll_true, nll_mix = fn(x, tf.constant(labels[i:i + batch_size], tf.int64))
        true_bpd.append(bits_per_dim(nll_true, num_dims).numpy())
        mix_bpd.append(bits_per_dim(nll_mix, num_dims).numpy())
    if labels is None:
        return {"flow_bits_per_dim_mixture": float(np.mean(np.concatenate(mix_bpd)))}
    true_bpd = np.concatenate(true_bpd)
    # The mean is what flows report; the median tells whether a few images dominate it.
    return {"flow_bits_per_dim": float(np.mean(true_bpd)),
            "flow_bits_per_dim_median": float(np.median(true_bpd)),
            "flow_bits_per_dim_mixture": float(np.mean(np.concatenate(mix_bpd)))}
