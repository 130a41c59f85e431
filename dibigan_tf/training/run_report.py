"""The run's report: the trained G's reconstructions of the held-out images scored by the
blackbox F, the paper's Figures 4, 6 and 7, metrics.json and report.md."""
from __future__ import annotations

import json
import os
import time

import numpy as np

from absl import logging
from PIL import Image

from dibigan_tf.config import RunConfig
from dibigan_tf.evaluation.attack import v_variation
from dibigan_tf.evaluation.report import (evaluate_reconstructions, reconstruction_figure,
                                          write_report)
from dibigan_tf.training.common import read_done
from dibigan_tf.training.datasets import dataset_of
from dibigan_tf.training.image_formats import grey_or_rgb, matcher_images
from dibigan_tf.training.pairs import report_pair_counts


def write_run_report(cfg: RunConfig, ctx) -> dict:
    """Evaluates the run's trained stages (a RunContext) on the held-out split and writes the
    report; returns its metrics."""
    train, heldout, store, trainer = ctx.train, ctx.heldout, ctx.store, ctx.trainer
    seconds = ctx.seconds
    held_features, train_features = ctx.held_features, ctx.train_features

    # 7. evaluation on the held-out split, scored by the blackbox F
    start = time.time()
    recons = trainer.reconstruct(held_features, seed=cfg.seed)
    recon_features = store.features(matcher_images(ctx.matcher, recons))
    # Class agreement: digits compare with the training split's class centroids; face
    # identities are held out whole, so their gallery is the held-out people's own real images
    # (rank-1 identification of each reconstruction among the held-out people).
    people = dataset_of(cfg).people
    gallery = ((held_features, heldout.labels) if people else (train_features, train.labels))
    pos, neg = report_pair_counts(cfg, heldout.labels, people)
    metrics = evaluate_reconstructions(held_features, recon_features, heldout.labels,
                                       gallery[0], gallery[1], num_positive=pos,
                                       num_negative=neg, seed=cfg.data_seed,
                                       leave_one_out=bool(people))
    # does v change the face, and does identity survive every v (v_variation_draws v over up to
    # v_variation_features held-out features; their images are F queries, counted)
    if cfg.v_variation_draws:
        queries = store.total_queries
        metrics.update(v_variation(
            lambda f, v: trainer.reconstruct(f, v=v), held_features, held_features,
            lambda images: store.features(matcher_images(ctx.matcher, images)),
            num_features=cfg.v_variation_features, num_draws=cfg.v_variation_draws,
            seed=cfg.seed, labels=heldout.labels, latent_dim=trainer.cfg.latent_dim))
        metrics["v_variation_blackbox_queries"] = store.total_queries - queries
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
    metrics.update(extra_report_keys(report_dir, ctx.run_dir))
    _paper_figures(report_dir, trainer, heldout, recons, held_features, cfg.seed)
    save_reconstructions(report_dir, heldout, recons)
    shown = np.isin(heldout.labels, np.unique(heldout.labels)[:16])   # faces: 16 people
    figure = reconstruction_figure(heldout.images[shown], recons[shown], heldout.labels[shown],
                                   per_class=8 if len(np.unique(heldout.labels)) <= 20 else 4)
    path = write_report(report_dir, metrics, figure,
                        title=f"DiBiGAN {cfg.mode} run `{cfg.run_name}` on {cfg.dataset}")
    logging.info("report: %s", path)
    return metrics


def _paper_figures(report_dir, trainer, heldout, recons, held_features, seed):
    """The paper's Figures 4, 6 and 7 on the held-out images, as PNGs in the report and as image
    summaries of the GAN stage: input | reconstruction | another image of the same person;
    several images of one person and their reconstructions; one feature with several v."""
    from dibigan_tf.evaluation.figures import figure4, figure6, figure7

    class Generate:
        latent_dim = trainer.cfg.latent_dim

        def __call__(self, features, v):
            return trainer.reconstruct(features, v=v)

    os.makedirs(report_dir, exist_ok=True)
    grids = {"figure4": figure4(heldout.images, recons, heldout.labels),
             "figure6": figure6(heldout.images, recons, heldout.labels),
             "figure7": figure7(Generate(), held_features[:6], seed=seed)}
    for name, grid in grids.items():
        Image.fromarray(grey_or_rgb(grid)).save(os.path.join(report_dir, name + ".png"))
        trainer.stage.images(name, grid)


def extra_report_keys(report_dir, run_dir):
    """Metrics that `run_figure3` added for this run's G (kept when the report is rewritten,
    dropped when G was trained again since)."""
    path = os.path.join(report_dir, "figure3.json")
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        saved = json.load(handle)
    if saved.get("gan_done") != read_done(os.path.join(run_dir, "gan")):
        return {}
    return saved["metrics"]


RECONSTRUCTIONS = "heldout_reconstructions.npz"


def save_reconstructions(report_dir, heldout, recons):
    """The held-out images and their reconstructions, in `report/heldout_reconstructions.npz`
    (ids: each image's path for faces, its index for digits; labels; real; recon; all uint8 at
    the training size), so runs can be set side by side later (experiments/figure4.py: Figure 4
    with whitebox and blackbox columns) without G, F or the data."""
    paths = getattr(heldout, "paths", None)
    ids = np.array(list(paths) if paths is not None else np.arange(len(heldout)).astype(str))
    os.makedirs(report_dir, exist_ok=True)
    path = os.path.join(report_dir, RECONSTRUCTIONS)
    np.savez_compressed(path + ".tmp.npz", ids=ids, labels=np.asarray(heldout.labels),
                        real=np.asarray(heldout.images, np.uint8),
                        recon=np.asarray(recons, np.uint8))
    os.replace(path + ".tmp.npz", path)
