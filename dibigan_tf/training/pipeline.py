"""The whole DiBiGAN pipeline in blackbox mode, stage after stage, each resumable on its own:

split -> matcher F (digits: LeNet trained here, then used only as a blackbox) -> feature store
(every image queried once) -> student F^S (Eq. 6) -> bijection H (class-conditional NLL) ->
G/D progressive training (Eq. 8, Eq. 9, section 3.4) -> evaluation and report.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from dibigan_tf.keras_compat import keras  # noqa: I001  (selects Keras 2 before TF loads)
import tensorflow as tf
from absl import logging
from PIL import Image

from dibigan_tf.config import RunConfig
from dibigan_tf.data.augment import affine_copies, concatenate
from dibigan_tf.data.digits import balanced_holdout_split, load_embedded_digits
from dibigan_tf.evaluation.verification import (cosine_similarity_rows,
                                                 nearest_centroid_agreement)
from dibigan_tf.evaluation.report import (evaluate_reconstructions, reconstruction_figure,
                                          write_report)
from dibigan_tf.matchers.lenet import LeNetMatcher
from dibigan_tf.matchers.store import FeatureStore
from dibigan_tf.training.classifier import train_lenet
from dibigan_tf.training.common import TrainingError, make_strategy
from dibigan_tf.training.flow import class_samples, evaluate_flow, train_flow
from dibigan_tf.training.gan import GanTrainer
from dibigan_tf.training.student import student_embed, train_student


def _save_json(path, data):
    with open(path + ".tmp", "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True, default=str)
    os.replace(path + ".tmp", path)


def load_dataset(cfg: RunConfig, run_dir: str):
    """(train ImageSet, held-out ImageSet); the split is recorded in the run and checked on
    resume so that a resumed run never trains on a held-out image."""
    if cfg.dataset != "digits":
        raise TrainingError(f"dataset {cfg.dataset!r} is not available yet (digits)")
    data = load_embedded_digits()
    train_idx, held_idx = balanced_holdout_split(data.labels, cfg.holdout_per_class, cfg.seed)
    if cfg.max_train_images:
        keep = np.random.default_rng(cfg.seed).permutation(len(train_idx))[:cfg.max_train_images]
        train_idx = np.sort(train_idx[keep])
    split_path = os.path.join(run_dir, "split.json")
    split = {"train": train_idx.tolist(), "heldout": held_idx.tolist()}
    if os.path.exists(split_path):
        with open(split_path) as handle:
            if json.load(handle) != split:
                raise TrainingError(f"{split_path} records another train/held-out split (a "
                                    f"different seed or holdout size); use another --run_name")
    else:
        _save_json(split_path, split)
    return data.subset(train_idx), data.subset(held_idx)


def run_blackbox(cfg: RunConfig, loop_kwargs: dict | None = None) -> dict:
    """Runs (or resumes) every stage; returns the metrics written to the report."""
    ctx = train_stages(cfg, loop_kwargs)
    train, heldout, store, trainer = ctx.train, ctx.heldout, ctx.store, ctx.trainer
    seconds = ctx.seconds
    held_features, train_features = ctx.held_features, ctx.train_features

    # 7. evaluation on the held-out split, scored by the blackbox F
    start = time.time()
    recons = trainer.reconstruct(held_features, seed=cfg.seed)
    recon_features = store.features(recons)
    metrics = evaluate_reconstructions(held_features, recon_features, heldout.labels,
                                       train_features, train.labels,
                                       num_positive=cfg.eval_positive_pairs,
                                       num_negative=cfg.eval_negative_pairs, seed=cfg.seed)
    seconds["evaluate"] = time.time() - start
    metrics.update(ctx.flow_metrics)
    metrics["student_cosine_heldout"] = ctx.student_cosine
    metrics["blackbox_queries"] = store.total_queries
    metrics["blackbox_queries_training_images"] = len(ctx.attack_features) + len(heldout)
    metrics["seconds"] = seconds
    metrics["seconds_total"] = float(sum(seconds.values()))
    metrics["run"] = cfg.run_name
    metrics["mode"] = cfg.mode
    report_dir = os.path.join(ctx.run_dir, "report")
    metrics.update(_extra_report_keys(report_dir, ctx.run_dir))
    figure = reconstruction_figure(heldout.images, recons, heldout.labels, per_class=8)
    path = write_report(report_dir, metrics, figure,
                        title=f"DiBiGAN {cfg.mode} run `{cfg.run_name}` on {cfg.dataset}")
    logging.info("report: %s", path)
    return metrics


class RunContext:
    """Everything the trained stages of a run give: data, feature store, F^S, H, G/D trainer."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


def train_stages(cfg: RunConfig, loop_kwargs: dict | None = None) -> RunContext:
    """Runs (or loads) every training stage of a run, in order; returns a RunContext."""
    _check_flow_from_run(cfg)
    run_dir, strategy, loop_kwargs = _open_run(cfg, loop_kwargs)
    seconds = {}

    # 1. data
    start = time.time()
    train, heldout = load_dataset(cfg, run_dir)
    seconds["data"] = time.time() - start
    logging.info("digits: %d training, %d held-out (%d per class)", len(train), len(heldout),
                 cfg.holdout_per_class)

    # 2. the matcher F: trained on the training split, then only ever a blackbox
    m = cfg.matcher
    _seed(cfg, 10)
    path = train_lenet(run_dir, strategy, train.images, train.labels, feature_dim=m.feature_dim,
                       epochs=m.epochs, batch_size=m.batch_size, learning_rate=m.learning_rate,
                       seed=cfg.seed, **loop_kwargs)
    seconds["matcher"] = _stage_seconds(run_dir, "matcher")
    matcher = LeNetMatcher.load(path)

    # 3. the feature store: each image sent to F once, ever
    start = time.time()
    store = FeatureStore(os.path.join(run_dir, "features"), matcher)
    train_features = store.features(train.images)
    held_features = store.features(heldout.images)
    uses = _augment_stages(cfg)
    attack = _attack_images(cfg, train)
    attack_features = train_features
    if len(attack) > len(train) and uses & {"student", "gan"}:   # H needs no features
        attack_features = np.concatenate([train_features,
                                          store.features(attack.images[len(train):])])
    seconds["features"] = time.time() - start
    logging.info("features: %d stored, %d queries in this session", len(store),
                 store.session_queries)
    pick = {name: (attack, attack_features) if name in uses else (train, train_features)
            for name in ("student", "flow", "gan")}

    # 4. the student F^S (Eq. 6)
    s = cfg.student
    _seed(cfg, 20)
    student_set, student_features = pick["student"]
    student, _ = train_student(run_dir, strategy, student_set.images, student_features,
                               depth=s.depth,
                               width=s.width, epochs=s.epochs, batch_size=s.batch_size,
                               learning_rate=s.learning_rate, max_shift=s.max_shift,
                               seed=cfg.seed + 1, **loop_kwargs)
    seconds["student"] = _stage_seconds(run_dir, "student")
    student_cos = float(np.mean(cosine_similarity_rows(student_embed(student, heldout.images),
                                                       held_features)))

    # 5. the bijection H (class-conditional log-likelihood), or the one trained on its own
    _seed(cfg, 30)
    flow, prior, flow_seconds = _flow_stage(cfg, run_dir, strategy, pick["flow"][0], loop_kwargs)
    seconds["flow"] = flow_seconds
    flow_metrics = evaluate_flow(flow, prior, heldout.images, heldout.labels)

    # 6. G and D
    _seed(cfg, 40)
    gan_set, gan_features = pick["gan"]
    trainer = GanTrainer(run_dir, strategy, cfg.gan, gan_set.images, gan_features, gan_set.labels,
                         student=student if cfg.gan.use_distill else None,
                         flow=flow if cfg.gan.use_biject else None)
    trainer.train(stop_after_steps=cfg.stop_after_steps, **loop_kwargs)
    seconds["gan"] = _stage_seconds(run_dir, "gan")

    return RunContext(cfg=cfg, run_dir=run_dir, strategy=strategy, loop_kwargs=loop_kwargs,
                      train=train, heldout=heldout, store=store, matcher=matcher,
                      attack_features=attack_features, gan_pairs=pick["gan"],
                      train_features=train_features, held_features=held_features,
                      student=student, student_cosine=student_cos, flow=flow, prior=prior,
                      flow_metrics=flow_metrics, trainer=trainer, seconds=seconds)


def _augment_stages(cfg: RunConfig) -> set:
    names = {n.strip() for n in cfg.augment_stages.split(",") if n.strip()}
    unknown = names - {"student", "flow", "gan"}
    if unknown:
        raise TrainingError(f"--augment_stages: unknown stage(s) {sorted(unknown)}; choose from "
                            f"student, flow, gan")
    return names


def _attack_images(cfg: RunConfig, train):
    """The attacker's images: the training split, then `augment_copies` fixed affine copies of
    each training image (the copies are drawn again from the seed on every start; they are the
    same images, so the store queries none of them twice)."""
    if not cfg.augment_copies:
        return train
    extra = affine_copies(train, cfg.augment_copies, cfg.seed)
    logging.info("augmentation: %d affine copies of the %d training images", len(extra),
                 len(train))
    return concatenate(train, extra)


def _open_run(cfg: RunConfig, loop_kwargs: dict | None):
    """(run dir, created, with this run's config.json; the strategy; the loop's keyword
    arguments with the run's checkpoint periods)."""
    _augment_stages(cfg)   # a bad stage name stops the run before anything trains
    run_dir = os.path.join(cfg.checkpoint_dir, cfg.run_name)
    os.makedirs(run_dir, exist_ok=True)
    config_path = os.path.join(run_dir, "config.json")
    if os.path.exists(config_path):
        with open(config_path) as handle:
            changed = config_changes(json.load(handle), json.loads(json.dumps(
                cfg.to_dict(), default=str)))
        if changed:
            logging.warning("run %s was started with other settings; finished stages keep "
                            "theirs, later stages use the new ones: %s", cfg.run_name,
                            "; ".join(changed))
    _save_json(config_path, cfg.to_dict())
    strategy = make_strategy(cfg.strategy, cfg.num_gpus or None)
    loop_kwargs = dict(loop_kwargs or {})
    loop_kwargs.setdefault("checkpoint_every_seconds", cfg.checkpoint_every_seconds)
    loop_kwargs.setdefault("checkpoint_every_steps", cfg.checkpoint_every_steps)
    return run_dir, strategy, loop_kwargs


# Settings that change how a run is driven, not what it trains.
_DRIVING_KEYS = {"stop_after_steps", "checkpoint_every_seconds", "checkpoint_every_steps",
                 "log_every", "image_every", "checkpoint_dir", "cache_real_targets"}


def config_changes(old: dict, new: dict, prefix="") -> list:
    """["key: old -> new", ...] for the training settings that differ between two configs."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key in _DRIVING_KEYS:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, prefix + key + ".")
        elif a != b:
            out.append(f"{prefix}{key}: {a} -> {b}")
    return out


def _extra_report_keys(report_dir, run_dir):
    """Metrics that `run_figure3` added for this run's G (kept when the report is rewritten,
    dropped when G was trained again since)."""
    path = os.path.join(report_dir, "figure3.json")
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        saved = json.load(handle)
    if saved.get("gan_done") != _done_info(run_dir, "gan"):
        return {}
    return saved["metrics"]


def _done_info(run_dir, name):
    with open(os.path.join(run_dir, name, "done.json")) as handle:
        return json.load(handle)


def run_figure3(cfg: RunConfig, loop_kwargs: dict | None = None) -> dict:
    """The paper's Figure 3 on the run's held-out images: reconstructions by a G trained with
    L_biject (the run's own G, configuration F) and by a second G trained the same way without it
    (stage `gan_without_biject`), projected to 2-D by PCA of their F features and of their H
    latents, in `report/figure3.png`; the ratio of mean intra-class to mean inter-class distance
    (L2-normalised F features; H latents) of each, added to `report/metrics.json`:
    `biject_intra_inter_ratio_without`, `biject_intra_inter_ratio_with` (F features) and the
    same keys with `_h` (H latents). Lower is tighter identities. Trains whatever is missing."""
    from dibigan_tf.evaluation.figures import intra_inter_ratio, pca_2d, scatter_panels
    from dibigan_tf.training.gan import flow_input
    from dibigan_tf.matchers.lenet import uint8_to_unit
    if not (cfg.gan.use_biject and cfg.gan.use_distill):
        raise TrainingError("Figure 3 compares the run's G (trained with L_biject and L_distill) "
                            "with one trained without L_biject: run it on a configuration (F) "
                            "run (--use_biject --use_distill)")
    ctx = train_stages(cfg, loop_kwargs)
    without_cfg = dataclasses.replace(cfg.gan, use_biject=False)
    _seed(cfg, 40)   # the same initial G and D as the run's own G
    gan_set, gan_features = ctx.gan_pairs
    without = GanTrainer(ctx.run_dir, ctx.strategy, without_cfg, gan_set.images,
                         gan_features, gan_set.labels, student=ctx.student,
                         name="gan_without_biject")
    without.train(**ctx.loop_kwargs)

    labels = ctx.heldout.labels
    points, metrics = {}, {}
    latent_fn = tf.function(lambda x: ctx.flow.forward(flow_input(x))[0])
    for name, trainer in (("without", without), ("with", ctx.trainer)):
        recons = trainer.reconstruct(ctx.held_features, seed=cfg.seed)
        feats = ctx.store.features(recons)
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        latents = np.concatenate([latent_fn(uint8_to_unit(recons[i:i + 250])).numpy()
                                  for i in range(0, len(recons), 250)])
        latents = latents.reshape(len(latents), -1)
        points[name] = (feats, latents)
        metrics[f"biject_intra_inter_ratio_{name}"] = intra_inter_ratio(feats, labels)
        metrics[f"biject_intra_inter_ratio_{name}_h"] = intra_inter_ratio(latents, labels)
        metrics[f"biject_recon_class_agreement_{name}"] = nearest_centroid_agreement(
            feats, labels, ctx.train_features, ctx.train.labels)
    metrics["biject_figure3_images"] = int(len(labels))
    panels = []
    for space, i in (("F features", 0), ("H latents", 1)):
        for name in ("without", "with"):
            ratio = metrics[f"biject_intra_inter_ratio_{name}" + ("_h" if i else "")]
            panels.append((f"{space} of reconstructions, {name} L_biject\n"
                           f"(PCA; intra/inter distance {ratio:.3f})", pca_2d(points[name][i]),
                           labels))
    report_dir = os.path.join(ctx.run_dir, "report")
    os.makedirs(report_dir, exist_ok=True)
    scatter_panels(panels, os.path.join(report_dir, "figure3.png"))
    _save_json(os.path.join(report_dir, "figure3.json"),
               {"gan_done": _done_info(ctx.run_dir, "gan"), "metrics": metrics})
    metrics_path = os.path.join(report_dir, "metrics.json")
    if os.path.exists(metrics_path):
        with open(metrics_path) as handle:
            report = json.load(handle)
        report.update(metrics)
        _save_json(metrics_path, report)
    logging.info("figure 3: %s", os.path.join(report_dir, "figure3.png"))
    return metrics


def _flow_stage(cfg: RunConfig, run_dir, strategy, train, loop_kwargs):
    """(flow, prior, seconds spent training H in this run): trains H here, or loads the finished
    flow stage of `cfg.flow.from_run` (0 seconds here)."""
    fl = cfg.flow
    flow_dir = fl.from_run or run_dir
    _check_flow_from_run(cfg)
    try:
        flow, prior = train_flow(flow_dir, strategy, train.images, train.labels,
                                 train.num_classes, num_steps=fl.num_steps,
                                 hidden_channels=fl.hidden_channels,
                                 num_res_blocks=fl.num_res_blocks, mixing=fl.mixing,
                                 covariance=fl.covariance, epochs=fl.epochs,
                                 batch_size=fl.batch_size, learning_rate=fl.learning_rate,
                                 seed=cfg.seed + 2, **loop_kwargs)
    except (ValueError, tf.errors.OpError) as error:
        if not fl.from_run:
            raise
        raise TrainingError(f"--flow_from_run={fl.from_run}: its H does not fit this run "
                            f"(same --flow_* flags and data needed): {error}") from None
    return flow, prior, (0.0 if fl.from_run else _stage_seconds(run_dir, "flow"))


def _seed(cfg: RunConfig, offset: int):
    """Seeds Python, numpy and TensorFlow before a stage builds its networks and steps, so a
    stage's initial weights and random streams depend on --seed and the stage alone (not on which
    stages ran before it in this process)."""
    keras.utils.set_random_seed(cfg.seed * 1000 + offset)


def _check_flow_from_run(cfg: RunConfig):
    fl = cfg.flow
    if fl.from_run and not os.path.exists(os.path.join(fl.from_run, "flow", "done.json")):
        raise TrainingError(f"--flow_from_run={fl.from_run}: no finished flow stage there "
                            f"(train it first: experiments/train.py --stage=flow "
                            f"--run_name=... )")


def run_flow(cfg: RunConfig, loop_kwargs: dict | None = None) -> dict:
    """H on its own (`train.py --stage=flow`): trains or resumes `<run>/flow`, then writes
    `<run>/flow/metrics.json` (held-out bits per dimension with the true class prior and with the
    class mixture) and `<run>/flow/class_samples.png` (one row of prior samples per class). A
    later run loads this H with `--flow_from_run=<run dir>`."""
    run_dir, strategy, loop_kwargs = _open_run(cfg, loop_kwargs)
    train, heldout = load_dataset(cfg, run_dir)
    # H needs no features, so its affine copies (when "flow" is an augmented stage) cost no query
    flow_set = _attack_images(cfg, train) if "flow" in _augment_stages(cfg) else train
    _seed(cfg, 30)
    flow, prior, seconds = _flow_stage(cfg, run_dir, strategy, flow_set, loop_kwargs)
    metrics = evaluate_flow(flow, prior, heldout.images, heldout.labels)
    metrics["flow_train_bits_per_dim"] = evaluate_flow(
        flow, prior, train.images[:len(heldout)], train.labels[:len(heldout)])["flow_bits_per_dim"]
    metrics["seconds"] = {"flow": seconds}
    metrics["run"] = cfg.run_name
    out = os.path.join(run_dir, "flow")
    Image.fromarray(_grey_or_rgb(class_samples(flow, prior, train.num_classes))).save(
        os.path.join(out, "class_samples.png"))
    _save_json(os.path.join(out, "metrics.json"), metrics)
    logging.info("flow metrics: %s", os.path.join(out, "metrics.json"))
    return metrics


def _grey_or_rgb(grid):
    return grid[..., 0] if grid.shape[-1] == 1 else grid


def _stage_seconds(run_dir, name):
    with open(os.path.join(run_dir, name, "done.json")) as handle:
        return float(json.load(handle)["seconds"])

