"""The step loop shared by every training: one distributed `tf.function` step per phase, a
prefetched resumable input pipeline, progress, TensorBoard scalars, NaN checks and periodic
checkpoints. The trainables (matcher, student, flow, GAN) supply only their replica step."""
from __future__ import annotations

import time
from typing import Callable, Optional

import tensorflow as tf

from dibigan_tf.training.common import (Progress, Stage, StopRequested, array_dataset,
                                        check_finite)


def graph_function(fn: Callable, **kwargs):
    """`tf.function(fn, **kwargs)` traced without AutoGraph, in `fn` and in the Keras layers it
    calls. The training and inference functions here branch only on Python values, and
    AutoGraph's conversion of them (with every layer and TFP bijector they call) took most of a
    trace's time. `fn` is also marked `do_not_convert`, so that a caller tracing with AutoGraph
    on does not convert it either. A branch on a tensor then fails at trace time instead of
    being rewritten into graph control flow."""
    return tf.function(tf.autograph.experimental.do_not_convert(fn), autograph=False, **kwargs)


def distributed_step(strategy, replica_fn: Callable, name: str = "train_step",
                     jit_compile: bool = False, post_fn: Optional[Callable] = None):
    """Wraps `replica_fn(batch, *args) -> dict of per-replica contributions` in one tf.function.

    Each contribution must already be divided by the global batch (so the SUM over replicas is
    the global mean); the returned dict holds those sums. `traces` counts Python traces (a test
    checks there is one per phase). `post_fn()` runs after the replicas, in cross-replica
    context, inside the same tf.function (e.g. the generator's EMA update).

    The step is traced without AutoGraph (see `graph_function`), `replica_fn` included:
    `strategy.run` converts nothing while `graph_function`'s conversion status is "disabled".
    """
    counter = {"traces": 0}

    def step(batch, *args):
        counter["traces"] += 1
        per_replica = strategy.run(replica_fn, args=(batch,) + tuple(args))
        if post_fn is not None:
            post_fn()
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()}

    fn = graph_function(step, jit_compile=jit_compile or None, reduce_retracing=False)
    fn.trace_counter = counter
    return fn


def run_phase(stage: Stage, step_fn, arrays: dict, batch_size: int, end_images: int,
              seed: int, total_images: Optional[int] = None, step_args: Optional[Callable] = None,
              log_every: int = 50, checkpoint_every_steps: int = 0,
              checkpoint_every_seconds: float = 120.0, on_log: Optional[Callable] = None,
              label: str = "", stop_after_steps: int = 0, inject_nan: str = "",
              noise: Optional[dict] = None):
    """Runs `step_fn` on batches until the stage has seen `end_images` images.

    step_args(images_seen) -> tuple of tensors passed after the batch (e.g. fade-in alpha and
    loss weights); on_log(step, metrics) is called every `log_every` steps after the scalars are
    written. Resumes from the stage's `images_seen`. `stop_after_steps` (> 0) stops the process
    cleanly after that many steps in this call, for tests of resumption. `inject_nan`
    ("<stage>:<step>", fault injection for tests of the NaN guard) replaces that step's first loss
    with NaN. `noise`: random tensors drawn in the input pipeline (common.array_dataset).
    """
    nan_stage, _, nan_step = inject_nan.partition(":")
    start = int(stage.images_seen.numpy())
    if start >= end_images:
        return
    dataset = array_dataset(arrays, batch_size, start, seed, stage.strategy, noise=noise)
    iterator = iter(dataset)
    progress = Progress(f"{stage.name}{(' ' + label) if label else ''}",
                        total_images or end_images, unit="image")
    last_save_step, last_save_time = int(stage.step.numpy()), time.time()
    steps_here = 0
    while int(stage.images_seen.numpy()) < end_images:
        seen = int(stage.images_seen.numpy())
        args = step_args(seen) if step_args else ()
        metrics = step_fn(next(iterator), *args)
        stage.step.assign_add(1)
        stage.images_seen.assign_add(batch_size)
        steps_here += 1
        step = int(stage.step.numpy())
        values = {k: float(v) for k, v in metrics.items()}
        if nan_stage == stage.name and nan_step and step == int(nan_step):
            values[next(iter(values))] = float("nan")
        # Every step, so that no checkpoint is ever written from non-finite weights.
        check_finite(values, stage.name, step)
        if step % log_every == 0 or int(stage.images_seen.numpy()) >= end_images:
            stage.scalars(values, step)
            progress.update(int(stage.images_seen.numpy()), values)
            if on_log:
                on_log(step, values)
        if ((checkpoint_every_steps and step - last_save_step >= checkpoint_every_steps) or
                time.time() - last_save_time >= checkpoint_every_seconds):
            stage.save()
            last_save_step, last_save_time = step, time.time()
        if stop_after_steps and steps_here >= stop_after_steps:
            stage.save()
            raise StopRequested(f"{stage.name} stopped at step {step} after {steps_here} steps "
                                f"(--stop_after_steps); run the same command to resume")
    progress.update(int(stage.images_seen.numpy()), force=True)
