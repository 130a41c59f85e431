"""The training stages of a run, in order, each resumable on its own:

split -> matcher F (digits: LeNet trained here, then used only as a blackbox; faces: dlib, ONNX,
Keras or an HTTP service) -> feature store (every image queried once) -> student F^S (Eq. 6;
whitebox mode: F itself, differentiated) -> bijection H (class-conditional NLL) -> G/D progressive
training (Eq. 8, Eq. 9, section 3.4). `RunContext` is what they hand on."""
from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from dibigan_tf import keras_compat  # noqa: F401,I001  (selects Keras 2 before TF loads)
import tensorflow as tf
from absl import logging

from dibigan_tf.config import RunConfig
from dibigan_tf.data.base import ImageSet
from dibigan_tf.evaluation.verification import cosine_similarity_rows
from dibigan_tf.matchers.lenet import LeNetMatcher
from dibigan_tf.matchers.base import Matcher, WhiteboxNetwork
from dibigan_tf.matchers.registry import open_matcher
from dibigan_tf.matchers.store import FeatureStore
from dibigan_tf.training.classifier import train_lenet
from dibigan_tf.training.common import TrainingError, progress_callback, stage_seconds
from dibigan_tf.training.datasets import (attack_images, augment_stages, check_data, dataset_of,
                                          load_dataset)
from dibigan_tf.training.flow import evaluate_flow, train_flow
from dibigan_tf.training.gan import GanTrainer
from dibigan_tf.training.image_formats import matcher_images, resized
from dibigan_tf.training.rundir import check_config, feature_store_root, open_run, seed_stage
from dibigan_tf.training.student import student_embed, train_student


@dataclasses.dataclass
class RunContext:
    """What the stages of a run hand on: the data, F behind its store, and the trained networks.

    `features_stage` fills the first group; `train_stages` adds F^S, H and the G/D trainer."""
    cfg: RunConfig
    run_dir: str
    strategy: tf.distribute.Strategy
    loop_kwargs: dict
    train: ImageSet               # training split, at the size F^S, H and G train on
    heldout: ImageSet             # held-out split (never trained on), same size
    store: FeatureStore           # F's answers, each image queried once
    matcher: Matcher              # F (digits: the LeNet trained here)
    train_features: np.ndarray
    held_features: np.ndarray
    attack_features: np.ndarray   # F's answers for the attacker's images (training + copies)
    pick: dict                    # stage name -> (ImageSet, features) it trains on
    seconds: dict                 # stage name -> seconds
    # set by train_stages
    student: object = None        # F^S (blackbox) or F itself as a WhiteboxNetwork (whitebox)
    student_cosine: float | None = None
    flow: object = None           # H (models/flow.py)
    prior: object = None          # H's class priors
    flow_metrics: dict = dataclasses.field(default_factory=dict)
    trainer: GanTrainer | None = None


def train_stages(cfg: RunConfig, loop_kwargs: dict | None = None) -> RunContext:
    """Runs (or loads) every training stage of a run, in order; returns a RunContext.

    loop_kwargs: the training loops' keyword arguments (loops.run_phase), such as the test hooks
    `inject_nan` (every stage) and `stop_after_steps` (the G/D stage only)."""
    loop_kwargs = dict(loop_kwargs or {})
    stop_gan_after = loop_kwargs.pop("stop_after_steps", 0)
    check_config(cfg, "all")
    check_flow_from_run(cfg)
    run_dir, strategy, loop_kwargs = open_run(cfg, loop_kwargs)
    ctx = features_stage(cfg, run_dir, strategy, loop_kwargs, report=True)
    seconds, heldout, pick = ctx.seconds, ctx.heldout, ctx.pick

    # 4. the student F^S (Eq. 6); in whitebox mode F itself takes its place (section 3.3)
    if cfg.mode == "whitebox":
        # F's embedding centred on the mean F^S's targets would have (pick["student"]: the
        # same features train_student averages), so both modes optimise the same Eq. 7
        student = WhiteboxNetwork(ctx.matcher, ctx.train.image_shape, embedding_mean=(
            pick["student"][1].mean(axis=0) if cfg.student.center_targets else None))
        student_cos = 1.0
        seconds["student"] = 0.0
    else:
        student, student_cos = student_stage(cfg, ctx)

    # 5. the bijection H (class-conditional log-likelihood), or the one trained on its own
    seed_stage(cfg, 30)
    flow, prior, flow_seconds = flow_stage(cfg, run_dir, strategy, pick["flow"][0], loop_kwargs)
    seconds["flow"] = flow_seconds
    flow_metrics = flow_bits_metrics(cfg, flow, prior, ctx.train, heldout)

    # 6. G and D
    seed_stage(cfg, 40)
    gan_set, gan_features = pick["gan"]
    trainer = GanTrainer(run_dir, strategy, cfg.gan, gan_set.images, gan_features, gan_set.labels,
                         student=student if cfg.gan.use_distill else None,
                         flow=flow if cfg.gan.use_biject else None, prior=prior)
    trainer.train(stop_after_steps=stop_gan_after, **loop_kwargs)
    seconds["gan"] = stage_seconds(run_dir, "gan")

    return dataclasses.replace(ctx, student=student,
                               student_cosine=student_cos, flow=flow, prior=prior,
                               flow_metrics=flow_metrics, trainer=trainer)


def features_stage(cfg: RunConfig, run_dir, strategy, loop_kwargs,
                    report: bool = False, training: bool = True) -> RunContext:
    """Data, the matcher F and the feature store (stages 1-3 of a run); returns a RunContext
    with train/heldout at the size F^S, H and G train on, their features, and the
    (images, features) pairs each later stage trains on (`pick`)."""
    seconds = {}
    # 1. data
    start = time.time()
    train, heldout = load_dataset(cfg, run_dir)
    if training:
        check_data(cfg, train, heldout, report)
    seconds["data"] = time.time() - start
    logging.info("%s: %d training images (%d identities), %d held-out (%d identities)",
                 cfg.dataset, len(train), len(np.unique(train.labels)), len(heldout),
                 len(np.unique(heldout.labels)))

    # 2. the matcher F: digits train their LeNet on the training split; any other matcher is
    # opened from its file/service. From here on F is only ever a blackbox behind the store.
    m = cfg.matcher
    if m.name == "lenet":
        if train.image_shape[-1] != 1:
            raise TrainingError("--matcher=lenet is the digits matcher; faces need another "
                                "(--matcher=dlib, onnx, keras, savedmodel or http)")
        seed_stage(cfg, 10)
        path = train_lenet(run_dir, strategy, train.images, train.labels,
                           feature_dim=m.feature_dim, epochs=m.epochs, batch_size=m.batch_size,
                           learning_rate=m.learning_rate, seed=cfg.seed, **loop_kwargs)
        seconds["matcher"] = stage_seconds(run_dir, "matcher")
        matcher = LeNetMatcher.load(path)
    else:
        matcher = open_matcher(m, train.image_shape)
        seconds["matcher"] = 0.0

    # 3. the feature store: each image sent to F once, ever
    start = time.time()
    store = FeatureStore(feature_store_root(cfg, run_dir), matcher,
                         progress=progress_callback("features", "image"))
    train_features = store.features(matcher_images(matcher, train.images))
    held_features = store.features(matcher_images(matcher, heldout.images))
    train = resized(cfg, train)
    heldout = resized(cfg, heldout)
    uses = augment_stages(cfg)
    attack = attack_images(cfg, train)
    attack_features = train_features
    if len(attack) > len(train) and uses & {"student", "gan"}:   # H needs no features
        attack_features = np.concatenate([train_features, store.features(
            matcher_images(matcher, attack.images[len(train):]))])
    seconds["features"] = time.time() - start
    logging.info("features: %d stored, %d queries in this session", len(store),
                 store.session_queries)
    pick = {name: (attack, attack_features) if name in uses else (train, train_features)
            for name in ("student", "flow", "gan")}
    return RunContext(cfg=cfg, run_dir=run_dir, strategy=strategy, loop_kwargs=loop_kwargs,
                      train=train, heldout=heldout, store=store, matcher=matcher,
                      attack_features=attack_features, train_features=train_features,
                      held_features=held_features, pick=pick, seconds=seconds)


def student_stage(cfg: RunConfig, ctx: RunContext):
    """Trains (or loads) F^S on the run's student pairs; (model, mean cosine between F^S and F
    on the held-out images)."""
    s = cfg.student
    seed_stage(cfg, 20)
    images, features = ctx.pick["student"]
    student, _ = train_student(ctx.run_dir, ctx.strategy, images.images, features,
                               depth=s.depth, width=s.width, epochs=s.epochs,
                               batch_size=s.batch_size, learning_rate=s.learning_rate,
                               lr_decay=s.lr_decay, max_shift=s.max_shift, seed=cfg.seed + 1,
                               center_targets=s.center_targets,
                               mixed_precision=cfg.mixed_precision, jit_compile=cfg.jit_compile,
                               **ctx.loop_kwargs)
    ctx.seconds["student"] = stage_seconds(ctx.run_dir, "student")
    cosine = float(np.mean(cosine_similarity_rows(student_embed(student, ctx.heldout.images),
                                                  ctx.held_features)))
    return student, cosine


def flow_stage(cfg: RunConfig, run_dir, strategy, train, loop_kwargs):
    """(flow, prior, seconds spent training H in this run): trains H here, or loads the finished
    flow stage of `cfg.flow.from_run` (0 seconds here)."""
    fl = cfg.flow
    flow_dir = fl.from_run or run_dir
    check_flow_from_run(cfg)
    try:
        flow, prior = train_flow(flow_dir, strategy, train.images, train.labels,
                                 train.num_classes, num_steps=fl.num_steps,
                                 hidden_channels=fl.hidden_channels,
                                 num_res_blocks=fl.num_res_blocks, mixing=fl.mixing,
                                 covariance=fl.covariance, epochs=fl.epochs,
                                 batch_size=fl.batch_size, learning_rate=fl.learning_rate,
                                 lr_decay=fl.lr_decay, max_shift=fl.max_shift,
                                 seed=cfg.seed + 2, jit_compile=cfg.jit_compile,
                                 **loop_kwargs)
    except (ValueError, tf.errors.OpError) as error:
        if not fl.from_run:
            raise
        raise TrainingError(f"--flow_from_run={fl.from_run}: its H does not fit this run "
                            f"(same --flow_* flags and data needed): {error}") from None
    return flow, prior, (0.0 if fl.from_run else stage_seconds(run_dir, "flow"))


def flow_bits_metrics(cfg: RunConfig, flow, prior, train, heldout) -> dict:
    """Held-out bits per dimension: digits with their class's prior and with the mixture; face
    identities are held out whole (H has no prior for them), so faces report the mixture over
    the training people and, with the true prior, the training images' own."""
    if not dataset_of(cfg).people:
        return evaluate_flow(flow, prior, heldout.images, heldout.labels)
    out = evaluate_flow(flow, prior, heldout.images, None)
    n = min(len(train), len(heldout))
    out["flow_train_bits_per_dim"] = evaluate_flow(flow, prior, train.images[:n],
                                                   train.labels[:n])["flow_bits_per_dim"]
    return out


# H's shape flags: a loaded H must have been trained with the loading run's values
_FLOW_SHAPE_FLAGS = {"num_steps": "flow_steps", "hidden_channels": "flow_hidden_channels",
                     "num_res_blocks": "flow_res_blocks", "mixing": "flow_mixing",
                     "covariance": "flow_covariance"}


def check_flow_from_run(cfg: RunConfig):
    """A run loading another run's H (--flow_from_run) needs a finished flow stage there, built
    with this run's --flow_* shape flags: an H with more sub-mappings than this run builds would
    otherwise load its first ones only, silently."""
    fl = cfg.flow
    if not fl.from_run:
        return
    if not os.path.exists(os.path.join(fl.from_run, "flow", "done.json")):
        raise TrainingError(f"--flow_from_run={fl.from_run}: no finished flow stage there "
                            f"(train it first: experiments/train.py --stage=flow "
                            f"--run_name=... )")
    config_path = os.path.join(fl.from_run, "config.json")
    if not os.path.exists(config_path):
        return
    with open(config_path) as handle:
        trained = json.load(handle).get("flow", {})
    differ = [f"--{flag}={trained[key]} there, {getattr(fl, key)} here"
              for key, flag in _FLOW_SHAPE_FLAGS.items()
              if key in trained and trained[key] != getattr(fl, key)]
    if differ:
        raise TrainingError(f"--flow_from_run={fl.from_run}: its H was built with other flags "
                            f"({'; '.join(differ)}); give this run the same ones")
