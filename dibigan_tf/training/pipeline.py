"""The entry points of `experiments/train.py --stage=...`: a whole run (`run_blackbox`) or one
part of it (`run_align`, `run_features`, `run_student`, `run_flow`, `run_figure3`).

The stages live in `stages.py`, the run directory in `rundir.py`, the data in `datasets.py`, the
report in `run_report.py` and Figure 3 in `figure3.py`."""
from __future__ import annotations

import os
import time

import numpy as np

from absl import logging
from PIL import Image

from dibigan_tf.config import RunConfig
from dibigan_tf.evaluation.verification import cosine_similarity_rows
from dibigan_tf.training.common import save_json
from dibigan_tf.training.datasets import attack_images, augment_stages, load_dataset, load_faces
from dibigan_tf.training.figure3 import run_figure3  # noqa: F401  (an entry point)
from dibigan_tf.training.flow import class_samples, evaluate_flow
from dibigan_tf.training.image_formats import grey_or_rgb
from dibigan_tf.training.pairs import pairs_file_indices, sampled_pairs
from dibigan_tf.training.run_report import write_run_report
from dibigan_tf.training.rundir import open_run, seed_stage
from dibigan_tf.training.stages import (features_stage, flow_bits_metrics, flow_stage,
                                        student_stage, train_stages)
from dibigan_tf.training.student import student_embed


def run_blackbox(cfg: RunConfig, loop_kwargs: dict | None = None) -> dict:
    """Runs (or resumes) every stage; returns the metrics written to the report."""
    return write_run_report(cfg, train_stages(cfg, loop_kwargs))


def run_student(cfg: RunConfig, loop_kwargs: dict | None = None) -> dict:
    """F^S on its own (`train.py --stage=student`, section 3.3): data, F through the feature
    store, F^S distilled with Eq. 6 (resumable), then measured on the held-out people, whom no
    network trained on: mean cosine between F^S and F embeddings, and the verification accuracy
    of F and of F^S on pairs of held-out people (sampled, and the pairs of `--pairs` whose two
    people are both held out). Writes `<run>/student/metrics.json`."""
    from dibigan_tf.evaluation import verification as ver
    run_dir, strategy, loop_kwargs = open_run(cfg, loop_kwargs)
    ctx = features_stage(cfg, run_dir, strategy, loop_kwargs)
    student, cosine = student_stage(cfg, ctx)
    held = ctx.heldout
    student_feats = student_embed(student, held.images)
    mu = ctx.train_features.mean(axis=0)
    metrics = {"student_cosine_heldout": cosine,
               # the same with the mean training feature removed from both (identity only), and
               # what predicting that mean for every image would score (the floor to beat)
               "student_cosine_heldout_centred": float(np.mean(cosine_similarity_rows(
                   student_feats - mu, ctx.held_features - mu))),
               "mean_feature_cosine_heldout": float(np.mean(cosine_similarity_rows(
                   np.broadcast_to(mu, ctx.held_features.shape), ctx.held_features))),
               "student_cosine_train": float(np.mean(cosine_similarity_rows(
                   student_embed(student, ctx.train.images[:len(held)]),
                   ctx.train_features[:len(held)]))),
               "heldout_images": len(held), "heldout_identities": int(len(np.unique(
                   held.labels))), "train_images": len(ctx.train),
               "train_identities": int(len(np.unique(ctx.train.labels))),
               "image_size": int(held.images.shape[1]),
               "matcher_input_size": int(ctx.matcher.input_shape[0]),
               "student_depth": str(cfg.student.depth), "student_width": cfg.student.width,
               "blackbox_queries": ctx.store.total_queries, "seconds": ctx.seconds}
    pair_sets = {"sampled": sampled_pairs(cfg, held.labels)}
    if cfg.pairs:
        pair_sets["pairs_file"] = pairs_file_indices(cfg.pairs, held, cfg.data_dir)
    for name, (idx_a, idx_b, same) in pair_sets.items():
        if len(same) < 2 or same.all() or not same.any():
            logging.warning("%s pairs: %d pairs (%d same), too few to measure", name, len(same),
                            int(same.sum()))
            continue
        folds = min(10, len(same))   # LFW's 10 folds; fewer only for a tiny pairs list
        real = ver.verification_metrics(ctx.held_features[idx_a], ctx.held_features[idx_b], same,
                                        num_folds=folds)
        stud = ver.verification_metrics(student_feats[idx_a], student_feats[idx_b], same,
                                        num_folds=folds)
        prefix = "" if name == "sampled" else "pairs_file_"
        metrics[f"{prefix}num_pairs"] = int(len(same))
        # a filtered LFW file keeps its order (e.g. pairsDevTrain.txt: positives, then
        # negatives): its folds are stratified, and the layout is recorded
        metrics[f"{prefix}fold_layout"] = real["fold_layout"]
        metrics.update(ver.metrics_json_keys(real, f"{prefix}real_"))
        metrics.update(ver.metrics_json_keys(stud, f"{prefix}student_"))
    # how closely F^S's input gradients (Eq. 7's embedding term) follow those of F itself, when
    # a differentiable copy of F exists (dlib on aligned chips: its Keras model)
    from dibigan_tf.matchers.dlib_keras import differentiable_reference
    from dibigan_tf.training.student import student_gradient_cosine
    reference = differentiable_reference(ctx.matcher)
    if reference is not None:
        metrics.update(student_gradient_cosine(student, reference, held.images, held.labels,
                                               seed=cfg.seed))
    save_json(os.path.join(run_dir, "student", "metrics.json"), metrics)
    logging.info("student metrics: %s", os.path.join(run_dir, "student", "metrics.json"))
    return metrics


def run_align(cfg: RunConfig, loop_kwargs: dict | None = None) -> dict:
    """Only the face alignment (`train.py --stage=align`): every photo detected, aligned and
    cached; returns the counts, the share aligned and the photos per second of this pass (0
    when everything came from the cache)."""
    start = time.time()
    faces, stats = load_faces(cfg)
    seconds = time.time() - start
    out = {k: v for k, v in stats.items() if k != "examples"}
    out.update({"identities": faces.num_classes, "seconds": seconds})
    if out["aligned_this_pass"]:
        out["photos_per_second"] = out["aligned_this_pass"] / seconds
    return out


def run_features(cfg: RunConfig, loop_kwargs: dict | None = None) -> dict:
    """Only data, F and the feature store (`train.py --stage=features`): every image is queried
    once; returns the counts."""
    run_dir, strategy, loop_kwargs = open_run(cfg, loop_kwargs)
    ctx = features_stage(cfg, run_dir, strategy, loop_kwargs, training=False)
    return {"blackbox_queries": ctx.store.total_queries,
            "blackbox_queries_this_session": ctx.store.session_queries,
            "stored_features": len(ctx.store), "train_images": len(ctx.train),
            "heldout_images": len(ctx.heldout), "seconds": ctx.seconds}


def run_flow(cfg: RunConfig, loop_kwargs: dict | None = None) -> dict:
    """H on its own (`train.py --stage=flow`): trains or resumes `<run>/flow`, then writes
    `<run>/flow/metrics.json` (held-out bits per dimension with the true class prior and with the
    class mixture) and `<run>/flow/class_samples.png` (one row of prior samples per class). A
    later run loads this H with `--flow_from_run=<run dir>`."""
    run_dir, strategy, loop_kwargs = open_run(cfg, loop_kwargs)
    train, heldout = load_dataset(cfg, run_dir)
    # H needs no features, so its affine copies (when "flow" is an augmented stage) cost no query
    flow_set = attack_images(cfg, train) if "flow" in augment_stages(cfg) else train
    seed_stage(cfg, 30)
    flow, prior, seconds = flow_stage(cfg, run_dir, strategy, flow_set, loop_kwargs)
    metrics = flow_bits_metrics(cfg, flow, prior, train, heldout)
    metrics["flow_train_bits_per_dim"] = evaluate_flow(
        flow, prior, train.images[:len(heldout)], train.labels[:len(heldout)])["flow_bits_per_dim"]
    metrics["seconds"] = {"flow": seconds}
    metrics["run"] = cfg.run_name
    out = os.path.join(run_dir, "flow")
    Image.fromarray(grey_or_rgb(class_samples(flow, prior, train.num_classes))).save(
        os.path.join(out, "class_samples.png"))
    save_json(os.path.join(out, "metrics.json"), metrics)
    logging.info("flow metrics: %s", os.path.join(out, "metrics.json"))
    return metrics
