"""The paper's Figure 3: G trained with and without L_biject, their reconstructions of the
held-out images in F's feature space and H's latent space, over one or more G seeds."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from dibigan_tf import keras_compat  # noqa: F401,I001  (selects Keras 2 before TF loads)
from absl import logging

from dibigan_tf.config import RunConfig
from dibigan_tf.evaluation.verification import nearest_centroid_agreement
from dibigan_tf.training.common import TrainingError, read_done, save_json
from dibigan_tf.training.datasets import dataset_of
from dibigan_tf.training.gan import GanTrainer
from dibigan_tf.training.image_formats import matcher_images
from dibigan_tf.training.loops import graph_function
from dibigan_tf.training.pairs import report_pair_counts
from dibigan_tf.training.run_report import write_run_report
from dibigan_tf.training.rundir import seed_stage
from dibigan_tf.training.stages import train_stages


def run_figure3(cfg: RunConfig, loop_kwargs: dict | None = None) -> dict:
    """The paper's Figure 3 on the run's held-out images: reconstructions by a G trained with
    L_biject (the run's own G, configuration F) and by a second G trained the same way without it
    (stage `gan_without_biject`), projected to 2-D by PCA of their F features and of their H
    latents, in `report/figure3.png`; the ratio of mean intra-class to mean inter-class distance
    (L2-normalised F features; H latents) of each, added to `report/metrics.json`:
    `biject_intra_inter_ratio_without`, `biject_intra_inter_ratio_with` (F features) and the
    same keys with `_h` (H latents). Lower is tighter identities. Trains whatever is missing.

    `cfg.figure3_seeds` > 1 repeats the comparison on more G seeds (stages `gan_seed<i>` and
    `gan_without_biject_seed<i>`: G's initial weights, data order and noise change; the split, F,
    F^S and H stay the run's, so only L_biject and G's own randomness differ). Then each key
    above is the mean over the seeds, `<key>_per_seed` lists the seeds' values (the run's own G
    first), `biject_intra_inter_ratio_std_diff` is the standard deviation over seeds of
    with - without, and `biject_intra_inter_ratio_seeds_tighter` counts the seeds where L_biject
    gave the lower ratio. The figure shows the run's own G."""
    from dibigan_tf.evaluation.figures import pca_2d, scatter_panels
    if not (cfg.gan.use_biject and cfg.gan.use_distill):
        raise TrainingError("Figure 3 compares the run's G (trained with L_biject and L_distill) "
                            "with one trained without L_biject: run it on a configuration (F) "
                            "run (--use_biject --use_distill)")
    if not 1 <= cfg.figure3_seeds <= 9:
        raise TrainingError(f"--figure3_seeds must be 1-9, not {cfg.figure3_seeds}")
    ctx = train_stages(cfg, loop_kwargs)
    gan_set, gan_features = ctx.pick["gan"]
    per_seed, points = [], {}
    latents_of = _flow_latents(ctx.flow)      # one traced H for every G and the real images
    for index in range(cfg.figure3_seeds):
        suffix = f"_seed{index}" if index else ""
        gan_cfg = dataclasses.replace(cfg.gan, seed=cfg.gan.seed + 100 * index)
        trainers = {}
        for name, biject in (("without", False), ("with", True)):
            if index == 0 and biject:
                trainers[name] = ctx.trainer          # the run's own G
                continue
            seed_stage(cfg, 40 + 100 * index)   # the with and without G of a seed start alike
            trainers[name] = GanTrainer(
                ctx.run_dir, ctx.strategy, dataclasses.replace(gan_cfg, use_biject=biject),
                gan_set.images, gan_features, gan_set.labels, student=ctx.student,
                flow=ctx.flow if biject else None, prior=ctx.prior,
                name=("gan" if biject else "gan_without_biject") + suffix)
            trainers[name].train(**ctx.loop_kwargs)
        seed_metrics, seed_points = _figure3_measures(cfg, ctx, trainers, latents_of)
        logging.info("figure 3, G seed %d of %d: %s", index + 1, cfg.figure3_seeds,
                     ", ".join(f"{k} {v:.4f}" for k, v in seed_metrics.items()))
        per_seed.append(seed_metrics)
        if index == 0:
            points = seed_points
    metrics = figure3_summary(per_seed)
    metrics["biject_figure3_images"] = int(len(ctx.heldout.labels))
    metrics.update(_figure3_real_reference(ctx, latents_of))
    labels = ctx.heldout.labels
    panels = []
    for space, i in (("F features", 0), ("H latents", 1)):
        for name in ("without", "with"):
            ratio = per_seed[0][f"biject_intra_inter_ratio_{name}" + ("_h" if i else "")]
            panels.append((f"{space} of reconstructions, {name} L_biject\n"
                           f"(PCA; intra/inter distance {ratio:.3f})", pca_2d(points[name][i]),
                           labels))
    report_dir = os.path.join(ctx.run_dir, "report")
    os.makedirs(report_dir, exist_ok=True)
    scatter_panels(panels, os.path.join(report_dir, "figure3.png"))
    save_json(os.path.join(report_dir, "figure3.json"),
               {"gan_done": read_done(os.path.join(ctx.run_dir, "gan")), "metrics": metrics})
    metrics_path = os.path.join(report_dir, "metrics.json")
    if os.path.exists(metrics_path):
        with open(metrics_path) as handle:
            report = json.load(handle)
        report.update(metrics)
        save_json(metrics_path, report)
    else:
        # a run trained by this stage alone has no report yet: write it from the stages loaded
        # here; it takes the Figure 3 keys from figure3.json
        write_run_report(cfg, ctx)
    logging.info("figure 3: %s", os.path.join(report_dir, "figure3.png"))
    return metrics


def _figure3_measures(cfg: RunConfig, ctx, trainers: dict, latents_of):
    """({metric: value} of one G seed, {"without"|"with": (F features, H latents)}) of the
    held-out reconstructions of each trainer."""
    from dibigan_tf.evaluation import verification as ver
    from dibigan_tf.evaluation.figures import intra_inter_ratio
    labels = ctx.heldout.labels
    # the report's verification pairs (run_report.write_run_report): each G's reconstruction
    # verification accuracy on them
    pos, neg = report_pair_counts(cfg, labels, dataset_of(cfg).people)
    idx_a, idx_b, same = ver.make_pairs(labels, pos, neg, seed=cfg.data_seed)
    metrics, points = {}, {}
    for name in ("without", "with"):
        recons = trainers[name].reconstruct(ctx.held_features, seed=cfg.seed)
        raw = ctx.store.features(matcher_images(ctx.matcher, recons))
        feats = _unit_rows(raw)
        metrics[f"biject_recon_verification_accuracy_{name}"] = float(
            ver.reconstruction_protocol(ctx.held_features, raw, idx_a, idx_b, same)["accuracy"])
        latents = latents_of(recons)
        points[name] = (feats, latents)
        metrics[f"biject_intra_inter_ratio_{name}"] = intra_inter_ratio(feats, labels)
        metrics[f"biject_intra_inter_ratio_{name}_h"] = intra_inter_ratio(latents, labels)
        metrics[f"biject_recon_class_agreement_{name}"] = nearest_centroid_agreement(
            feats, labels, ctx.train_features, ctx.train.labels)
    return metrics, points


def _figure3_real_reference(ctx, latents_of) -> dict:
    """The same ratios for the real held-out images (their F features, their H latents): how
    tight the identities are before any reconstruction, the scale the G ratios compare with."""
    from dibigan_tf.evaluation.figures import intra_inter_ratio
    labels = ctx.heldout.labels
    return {"biject_intra_inter_ratio_real": intra_inter_ratio(_unit_rows(ctx.held_features),
                                                               labels),
            "biject_intra_inter_ratio_real_h": intra_inter_ratio(
                latents_of(ctx.heldout.images), labels)}


def _unit_rows(features):
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _flow_latents(flow, batch_size=250):
    """A function: uint8 images -> H(x) flattened, [N, D]; its tf.function is traced once per
    batch shape, however many image sets it is given."""
    from dibigan_tf.data.images import uint8_to_unit
    from dibigan_tf.training.gan import flow_input
    latent_fn = graph_function(lambda x: flow.forward(flow_input(x))[0])

    def latents_of(images):
        latents = np.concatenate([latent_fn(uint8_to_unit(images[i:i + batch_size])).numpy()
                                  for i in range(0, len(images), batch_size)])
        return latents.reshape(len(latents), -1)
    return latents_of


def figure3_summary(per_seed: list) -> dict:
    """Figure 3's keys over G seeds: the mean of each, and with several seeds the per-seed
    values, the spread of with - without and how many seeds L_biject tightened."""
    if len(per_seed) == 1:
        return dict(per_seed[0])
    out = {"biject_figure3_seeds": len(per_seed)}
    for key in per_seed[0]:
        values = [float(m[key]) for m in per_seed]
        out[key] = float(np.mean(values))
        out[key + "_per_seed"] = values
    for space in ("", "_h"):
        diff = np.array([m[f"biject_intra_inter_ratio_with{space}"] -
                         m[f"biject_intra_inter_ratio_without{space}"] for m in per_seed])
        out[f"biject_intra_inter_ratio{space}_std_diff"] = float(np.std(diff, ddof=1))
        out[f"biject_intra_inter_ratio{space}_seeds_tighter"] = int(np.sum(diff < 0))
    return out
