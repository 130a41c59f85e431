"""The whole DiBiGAN pipeline, stage after stage, each resumable on its own:

split -> matcher F (digits: LeNet trained here, then used only as a blackbox; faces: dlib, ONNX,
Keras or an HTTP service) -> feature store (every image queried once) -> student F^S (Eq. 6;
whitebox mode: F itself, differentiated) -> bijection H (class-conditional NLL) -> G/D progressive
training (Eq. 8, Eq. 9, section 3.4) -> evaluation and report.
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
from dibigan_tf.data.files import write_json_atomic
from dibigan_tf.data.digits import balanced_holdout_split, load_embedded_digits
from dibigan_tf.data.faces import resize_images, split_identities
from dibigan_tf.evaluation.attack import v_variation
from dibigan_tf.evaluation.verification import (cosine_similarity_rows,
                                                 nearest_centroid_agreement)
from dibigan_tf.evaluation.report import (evaluate_reconstructions, reconstruction_figure,
                                          write_report)
from dibigan_tf.matchers.lenet import LeNetMatcher
from dibigan_tf.matchers.base import WhiteboxNetwork
from dibigan_tf.matchers.registry import open_matcher
from dibigan_tf.matchers.store import FeatureStore
from dibigan_tf.training.classifier import train_lenet
from dibigan_tf.training.common import Progress, TrainingError, make_strategy
from dibigan_tf.training.flow import class_samples, evaluate_flow, train_flow
from dibigan_tf.training.gan import GanTrainer
from dibigan_tf.training.student import student_embed, train_student


def _save_json(path, data):
    write_json_atomic(path, data, indent=2, sort_keys=True, default=str)


def load_dataset(cfg: RunConfig, run_dir: str):
    """(train ImageSet, held-out ImageSet); the split is recorded in the run and checked on
    resume so that a resumed run never trains on a held-out image.

    digits: the embedded MNIST digits, `holdout_per_class` per class held out. faces: the
    identity folders under `data_dir`, aligned onto dlib's face-chip template at `align_size`
    (cached), a seeded `heldout_fraction` of the *people* held out. celeba and tfds (a prepared
    TensorFlow Datasets build) are faces too, listed another way (`load_faces`)."""
    if cfg.dataset == "digits":
        data = load_embedded_digits()
        train_idx, held_idx = balanced_holdout_split(data.labels, cfg.holdout_per_class,
                                                     cfg.seed)
        names = None
    elif cfg.dataset in ("faces", "celeba", "tfds"):
        data, _ = load_faces(cfg)
        train_idx, held_idx = split_identities(data.labels, cfg.heldout_fraction, cfg.seed)
        names = data.paths
    else:
        raise TrainingError(f"unknown dataset {cfg.dataset!r} (digits, faces, celeba, tfds)")
    if cfg.max_train_images:
        keep = np.random.default_rng(cfg.seed).permutation(len(train_idx))[:cfg.max_train_images]
        train_idx = np.sort(train_idx[keep])
    split_path = os.path.join(run_dir, "split.json")
    ids = (lambda idx: idx.tolist()) if names is None else (lambda idx: [names[i] for i in idx])
    split = {"train": ids(train_idx), "heldout": ids(held_idx)}
    if os.path.exists(split_path):
        with open(split_path) as handle:
            if json.load(handle) != split:
                _replace_split(cfg, run_dir, split_path)
                _save_json(split_path, split)
    else:
        _save_json(split_path, split)
    if cfg.dataset == "digits":
        return data.subset(train_idx), data.subset(held_idx)
    # Face identities are split whole: each side gets its own label range 0..K-1 (H's class
    # priors are over the training people only).
    return _relabel(data.subset(train_idx)), _relabel(data.subset(held_idx))


def _replace_split(cfg: RunConfig, run_dir: str, split_path: str):
    """The run's recorded split differs from the one its flags give now. Nothing trained on the
    old split yet: the new one replaces it (a warning). Otherwise a TrainingError naming exactly
    what to delete: the stages trained on the old split (the aligned crops and, for a matcher
    opened from a file or service, the stored features do not depend on it and are kept)."""
    trained = []
    for name in sorted(os.listdir(run_dir)):
        path = os.path.join(run_dir, name)
        if not os.path.isdir(path):
            continue
        depends = (name in ("matcher", "student", "flow", "report") or name.startswith("gan")
                   or (name == "features" and cfg.matcher.name == "lenet"))
        if depends and (os.listdir(path)):
            trained.append(path)
    if trained:
        raise TrainingError(f"{split_path} records another train/held-out split (a different "
                            f"seed, held-out share, image folder or --max_train_images) and "
                            f"{len(trained)} stage(s) trained on it; to train this run on the new "
                            f"split delete {split_path} and {' '.join(trained)} (aligned crops and "
                            f"stored features are kept), or give another --run_name")
    logging.warning("%s: the split changed, and no stage has trained on the old one yet: the "
                    "new split replaces it", split_path)


#: fewest training images a run trains on (G's progress grid shows 16 distinct training images)
MIN_TRAIN_IMAGES = 16


def check_config(cfg: RunConfig, stage: str = "all"):
    """Every check of the flags that needs no data, run before anything is aligned, queried or
    trained: a TrainingError with a one-line reason."""
    if cfg.dataset != "digits" and not 0.0 < cfg.heldout_fraction < 1.0:
        raise TrainingError(f"--heldout_fraction={cfg.heldout_fraction}: must be between 0 and 1 "
                            f"(the share of the people held out)")
    g = cfg.gan
    sizes = {"--student_batch_size": [cfg.student.batch_size],
             "--flow_batch_size": [cfg.flow.batch_size],
             "--base_batch_size": [g.base_batch_size],
             "--batch_sizes": list(g.batch_sizes or [])}
    for flag, values in sizes.items():
        if any(int(v) <= 0 for v in values):
            raise TrainingError(f"{flag}={','.join(str(v) for v in values)}: batch sizes must be "
                                f"positive")
    if cfg.image_size < 0:
        raise TrainingError(f"--image_size={cfg.image_size}: must be positive (or 0: the data's)")
    if stage in ("all", "figure3"):
        size = cfg.image_size or (32 if cfg.dataset == "digits" else cfg.align_size)
        last = g.start_resolution * 2 ** (g.num_blocks - 1)
        if last != size:
            raise TrainingError(f"G's last stage is {last}x{last} (--start_resolution="
                                f"{g.start_resolution}, --num_blocks={g.num_blocks}) but the images "
                                f"are {size}x{size} (--image_size); make them equal")
        if min(cfg.eval_positive_pairs, cfg.eval_negative_pairs) <= 0:
            raise TrainingError("--eval_positive_pairs and --eval_negative_pairs must be positive")


def _check_data(cfg: RunConfig, train, heldout, report: bool):
    """The checks that need the split, run before any query or training: enough training
    images, and (when the run ends with its report) enough held-out pairs for it."""
    if len(train) < MIN_TRAIN_IMAGES:
        raise TrainingError(f"only {len(train)} training images after alignment and the split; a "
                            f"run needs at least {MIN_TRAIN_IMAGES} (add images, lower "
                            f"--heldout_fraction or raise --max_train_images)")
    if report and cfg.dataset != "digits":
        _pair_counts(cfg, heldout.labels)


def _relabel(data):
    present, labels = np.unique(data.labels, return_inverse=True)
    return dataclasses.replace(data, labels=labels.astype(np.int64),
                               class_names=[data.class_names[i] for i in present])


def load_faces(cfg: RunConfig):
    """(FaceSet, alignment statistics) of `cfg.data_dir`; the statistics are logged and kept in
    `<align cache>/<aligner key>/stats.json`.

    faces: identity folders (or the files of `people`); celeba: CelebA's identity file and
    photos; tfds: the `tfds_split` of the TFDS build `tfds_name` prepared under `data_dir`
    (never downloaded), its first `max_train_images` examples when that is set (the held-out
    people then come from those too). All three are aligned by the same aligner into the same
    cache (`load_tfds_faces` explains the key of an image that has no file)."""
    from dibigan_tf.data.align import make_aligner
    from dibigan_tf.data.faces import load_face_folders
    if not cfg.data_dir:
        raise TrainingError(f"--dataset={cfg.dataset} needs --data_dir (faces: "
                            f"<root>/<identity>/<image>; celeba: the folder with the identity "
                            f"file and the images; tfds: the TFDS data_dir holding the prepared "
                            f"{cfg.tfds_name or 'lfw'})")
    if cfg.dataset == "tfds" and (cfg.people or cfg.pairs):
        raise TrainingError(f"--{'people' if cfg.people else 'pairs'} names LFW's images by "
                            f"their file numbers, which a TFDS build does not keep; use it with "
                            f"--dataset=faces on LFW's folder")
    aligner = make_aligner(cfg.align_template, cfg.align_size, cfg.align_multiple, cfg.align_none,
                           cfg.align_upsample)
    cache = cfg.align_cache_dir or os.path.join(cfg.checkpoint_dir, "aligned")
    if cfg.dataset == "tfds":
        from dibigan_tf.data.tfds_faces import load_tfds_faces
        faces, stats = load_tfds_faces(cfg.tfds_name, cfg.data_dir, aligner, cache,
                                       split=cfg.tfds_split, max_images=cfg.max_train_images,
                                       progress=progress_callback("align", "image"))
    else:
        root, records = cfg.data_dir, None
        if cfg.dataset == "celeba":
            from dibigan_tf.data.celeba import find_celeba, read_celeba_identities
            identity_file, root = find_celeba(cfg.data_dir)
            records = read_celeba_identities(identity_file, root)
        elif cfg.people:
            from dibigan_tf.data.faces import read_lfw_people
            records = read_lfw_people(cfg.people, cfg.data_dir)
        faces, stats = load_face_folders(root, aligner, cache, records=records,
                                         progress=progress_callback("align", "image"))
    logging.info("faces: %d of %d images aligned (%.1f%%), %d identities; %s",
                 stats["aligned"], stats["images"], 100 * stats["aligned_share"],
                 faces.num_classes, {k: v for k, v in stats.items() if k.startswith("status_")})
    stats["cache"] = os.path.join(cache, aligner.key)
    _save_json(os.path.join(stats["cache"], "stats.json"), stats)
    return faces, stats


def progress_callback(name: str, unit: str):
    """A `progress(done, total, seconds)` callback drawing a Progress line (made on first use)."""
    bars = {}

    def update(done, total, _seconds):
        if total not in bars:
            bars[total] = Progress(name, total, unit=unit)
        bars[total].update(done)
    return update


def model_images(cfg: RunConfig, images: np.ndarray) -> np.ndarray:
    """The images at the size F^S, H and G train on (`image_size`; 0 keeps the dataset's)."""
    if not cfg.image_size or cfg.image_size == images.shape[1]:
        return images
    return resize_images(images, cfg.image_size)


def matcher_images(matcher, images: np.ndarray) -> np.ndarray:
    """Images in the matcher's input format: resized to its size, and grey <-> RGB when its
    channels differ (G's reconstructions and evaluation images before F sees them)."""
    size, channels = matcher.input_shape[0], matcher.input_shape[-1]
    if images.shape[1] != size:
        images = resize_images(images, size)
    if images.shape[-1] != channels:
        if channels == 1:
            images = np.round(images.astype(np.float32).mean(axis=-1, keepdims=True)
                              ).astype(np.uint8)
        elif images.shape[-1] == 1:
            images = np.repeat(images, channels, axis=-1)
    return images


def run_blackbox(cfg: RunConfig, loop_kwargs: dict | None = None) -> dict:
    """Runs (or resumes) every stage; returns the metrics written to the report."""
    return _write_run_report(cfg, train_stages(cfg, loop_kwargs))


def _write_run_report(cfg: RunConfig, ctx) -> dict:
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
    gallery = ((train_features, train.labels) if cfg.dataset == "digits"
               else (held_features, heldout.labels))
    pos, neg = cfg.eval_positive_pairs, cfg.eval_negative_pairs
    if cfg.dataset != "digits":
        pos, neg = _pair_counts(cfg, heldout.labels)
    metrics = evaluate_reconstructions(held_features, recon_features, heldout.labels,
                                       gallery[0], gallery[1], num_positive=pos,
                                       num_negative=neg, seed=cfg.seed)
    # does v change the face, and does identity survive every v (8 v over 64 held-out features)
    queries = store.total_queries
    metrics.update(v_variation(lambda f, v: trainer.reconstruct(f, v=v), held_features,
                               held_features, lambda images: store.features(
                                   matcher_images(ctx.matcher, images)), seed=cfg.seed,
                               labels=heldout.labels, latent_dim=trainer.cfg.latent_dim))
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
    metrics.update(_extra_report_keys(report_dir, ctx.run_dir))
    _paper_figures(report_dir, trainer, heldout, recons, held_features, cfg.seed)
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
        Image.fromarray(_grey_or_rgb(grid)).save(os.path.join(report_dir, name + ".png"))
        trainer.stage.images(name, grid)


class RunContext:
    """Everything the trained stages of a run give: data, feature store, F^S, H, G/D trainer."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


def train_stages(cfg: RunConfig, loop_kwargs: dict | None = None) -> RunContext:
    """Runs (or loads) every training stage of a run, in order; returns a RunContext."""
    check_config(cfg, "all")
    _check_flow_from_run(cfg)
    run_dir, strategy, loop_kwargs = _open_run(cfg, loop_kwargs)
    ctx = _features_stage(cfg, run_dir, strategy, loop_kwargs, report=True)
    seconds, heldout, pick = ctx.seconds, ctx.heldout, ctx.pick

    # 4. the student F^S (Eq. 6); in whitebox mode F itself takes its place (section 3.3)
    if cfg.mode == "whitebox":
        student = WhiteboxNetwork(ctx.matcher, ctx.train.image_shape)
        student_cos = 1.0
        seconds["student"] = 0.0
    else:
        student, student_cos = _student_stage(cfg, ctx)

    # 5. the bijection H (class-conditional log-likelihood), or the one trained on its own
    _seed(cfg, 30)
    flow, prior, flow_seconds = _flow_stage(cfg, run_dir, strategy, pick["flow"][0], loop_kwargs)
    seconds["flow"] = flow_seconds
    flow_metrics = _flow_metrics(cfg, flow, prior, ctx.train, heldout)

    # 6. G and D
    _seed(cfg, 40)
    gan_set, gan_features = pick["gan"]
    trainer = GanTrainer(run_dir, strategy, cfg.gan, gan_set.images, gan_features, gan_set.labels,
                         student=student if cfg.gan.use_distill else None,
                         flow=flow if cfg.gan.use_biject else None, prior=prior)
    trainer.train(stop_after_steps=cfg.stop_after_steps, **loop_kwargs)
    seconds["gan"] = _stage_seconds(run_dir, "gan")

    ctx.__dict__.update(gan_pairs=pick["gan"], student=student, student_cosine=student_cos,
                        flow=flow, prior=prior, flow_metrics=flow_metrics, trainer=trainer)
    return ctx


def _student_stage(cfg: RunConfig, ctx: RunContext):
    """Trains (or loads) F^S on the run's student pairs; (model, mean cosine between F^S and F
    on the held-out images)."""
    s = cfg.student
    _seed(cfg, 20)
    images, features = ctx.pick["student"]
    student, _ = train_student(ctx.run_dir, ctx.strategy, images.images, features,
                               depth=s.depth, width=s.width, epochs=s.epochs,
                               batch_size=s.batch_size, learning_rate=s.learning_rate,
                               max_shift=s.max_shift, seed=cfg.seed + 1,
                               center_targets=s.center_targets,
                               mixed_precision=cfg.mixed_precision, jit_compile=cfg.jit_compile,
                               **ctx.loop_kwargs)
    ctx.seconds["student"] = _stage_seconds(ctx.run_dir, "student")
    cosine = float(np.mean(cosine_similarity_rows(student_embed(student, ctx.heldout.images),
                                                  ctx.held_features)))
    return student, cosine


def run_student(cfg: RunConfig, loop_kwargs: dict | None = None) -> dict:
    """F^S on its own (`train.py --stage=student`, section 3.3): data, F through the feature
    store, F^S distilled with Eq. 6 (resumable), then measured on the held-out people, whom no
    network trained on: mean cosine between F^S and F embeddings, and the verification accuracy
    of F and of F^S on pairs of held-out people (sampled, and the pairs of `--pairs` whose two
    people are both held out). Writes `<run>/student/metrics.json`."""
    from dibigan_tf.evaluation import verification as ver
    run_dir, strategy, loop_kwargs = _open_run(cfg, loop_kwargs)
    ctx = _features_stage(cfg, run_dir, strategy, loop_kwargs)
    student, cosine = _student_stage(cfg, ctx)
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
    pair_sets = {"sampled": _sampled_pairs(cfg, held.labels)}
    if cfg.pairs:
        pair_sets["pairs_file"] = _pairs_file_indices(cfg.pairs, held, cfg.data_dir)
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
    _save_json(os.path.join(run_dir, "student", "metrics.json"), metrics)
    logging.info("student metrics: %s", os.path.join(run_dir, "student", "metrics.json"))
    return metrics


def _pair_counts(cfg: RunConfig, labels):
    """(positives, negatives) for face verification: as many positives as the held-out people
    allow, up to `eval_positive_pairs`, a multiple of 10 (the folds), and as many negatives."""
    _, counts = np.unique(labels, return_counts=True)
    available = int(np.sum(counts * (counts - 1) // 2))
    num = min(cfg.eval_positive_pairs, available, cfg.eval_negative_pairs)
    num -= num % 10
    if num < 10:
        raise TrainingError(f"the held-out people allow only {available} positive pairs, the "
                            f"report needs 10: hold out more people (--heldout_fraction) or use "
                            f"more images per person")
    return num, num


def _sampled_pairs(cfg: RunConfig, labels):
    """Verification pairs among the held-out people: as many positives as they allow, up to
    `eval_positive_pairs`, and as many negatives."""
    from dibigan_tf.evaluation import verification as ver
    try:
        num, _ = _pair_counts(cfg, labels)
    except TrainingError:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    return ver.make_pairs(labels, num, num, seed=cfg.seed)


def _pairs_file_indices(path, held, data_dir=""):
    """Indices into `held` of the LFW pairs file's pairs whose two images are held out (an
    image found as evaluate.py finds it: `PairFiles` of the data root, else LFW's naming)."""
    from dibigan_tf.data.faces import PairFiles, lfw_file_name, read_lfw_pairs
    find = PairFiles(data_dir) if data_dir and os.path.isdir(data_dir) else None

    def file_of(name, number):   # "<identity>/<file>"
        found = find(name, number) if find else None
        return "/".join((found or lfw_file_name(name, number)).replace(os.sep, "/")
                        .split("/")[-2:])
    where = {}
    for i, rel in enumerate(held.paths):
        parts = rel.replace(os.sep, "/").split("/")
        where["/".join(parts[-2:])] = i
    a, b, same = [], [], []
    pairs = read_lfw_pairs(path)
    for n1, i1, n2, i2, is_same in pairs:
        k1, k2 = file_of(n1, i1), file_of(n2, i2)
        if k1 in where and k2 in where:
            a.append(where[k1])
            b.append(where[k2])
            same.append(is_same)
    logging.info("%s: %d of %d pairs have both images held out and aligned", path, len(a),
                 len(pairs))
    return np.array(a, np.int64), np.array(b, np.int64), np.array(same, bool)


def _features_stage(cfg: RunConfig, run_dir, strategy, loop_kwargs,
                    report: bool = False, training: bool = True) -> RunContext:
    """Data, the matcher F and the feature store (stages 1-3 of a run); returns a RunContext
    with train/heldout at the size F^S, H and G train on, their features, and the
    (images, features) pairs each later stage trains on (`pick`)."""
    seconds = {}
    # 1. data
    start = time.time()
    train, heldout = load_dataset(cfg, run_dir)
    if training:
        _check_data(cfg, train, heldout, report)
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
        _seed(cfg, 10)
        path = train_lenet(run_dir, strategy, train.images, train.labels,
                           feature_dim=m.feature_dim, epochs=m.epochs, batch_size=m.batch_size,
                           learning_rate=m.learning_rate, seed=cfg.seed, **loop_kwargs)
        seconds["matcher"] = _stage_seconds(run_dir, "matcher")
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
    train = _resized(cfg, train)
    heldout = _resized(cfg, heldout)
    uses = _augment_stages(cfg)
    attack = _attack_images(cfg, train)
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


def feature_store_root(cfg: RunConfig, run_dir: str) -> str:
    """Where F's answers are kept: inside the run for the LeNet the run trains itself, shared by
    every run under `<checkpoint_dir>/features/<matcher key>/` for a matcher opened from a file
    or service (so a later run queries none of the images an earlier one stored)."""
    if cfg.matcher.name == "lenet":
        return os.path.join(run_dir, "features")
    return cfg.feature_store_dir or os.path.join(cfg.checkpoint_dir, "features")


def run_align(cfg: RunConfig, loop_kwargs: dict | None = None) -> dict:
    """Only the face alignment (`train.py --stage=align`): every photo detected, aligned and
    cached; returns the counts, the share aligned and the photos per second of this pass (0
    when everything came from the cache)."""
    if cfg.dataset == "digits":
        raise TrainingError("--stage=align is for face datasets (--data_dir=...)")
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
    run_dir, strategy, loop_kwargs = _open_run(cfg, loop_kwargs)
    ctx = _features_stage(cfg, run_dir, strategy, loop_kwargs, training=False)
    return {"blackbox_queries": ctx.store.total_queries,
            "blackbox_queries_this_session": ctx.store.session_queries,
            "stored_features": len(ctx.store), "train_images": len(ctx.train),
            "heldout_images": len(ctx.heldout), "seconds": ctx.seconds}


def _resized(cfg: RunConfig, data):
    """`data` with its images at the training size (a copy when they change)."""
    images = model_images(cfg, data.images)
    if images is data.images:
        return data
    return dataclasses.replace(data, images=images)


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
            old = json.load(handle)
        _check_same_precision(old, cfg)
        changed = config_changes(old, json.loads(json.dumps(cfg.to_dict(), default=str)))
        if changed:
            logging.warning("run %s was started with other settings; finished stages keep "
                            "theirs, later stages use the new ones: %s", cfg.run_name,
                            "; ".join(changed))
    _save_json(config_path, cfg.to_dict())
    strategy = make_strategy(cfg.strategy, cfg.num_gpus or None)
    loop_kwargs = dict(loop_kwargs or {})
    loop_kwargs.setdefault("checkpoint_every_seconds", cfg.checkpoint_every_seconds)
    loop_kwargs.setdefault("checkpoint_every_steps", cfg.checkpoint_every_steps)
    if cfg.inject_nan:
        loop_kwargs.setdefault("inject_nan", cfg.inject_nan)
    return run_dir, strategy, loop_kwargs


def _check_same_precision(old: dict, cfg: RunConfig):
    """A run's checkpoints hold its optimizers as built for its precision policy (a loss-scaled
    optimizer under mixed_float16), so a resumed run must keep the policy it started with."""
    before = old.get("mixed_precision", "float32")
    if before != cfg.mixed_precision:
        raise TrainingError(f"run {cfg.run_name} was started with --mixed_precision={before}; "
                            f"resume it with the same policy, or give another --run_name")


# Settings that change how a run is driven, not what it trains.
_DRIVING_KEYS = {"stop_after_steps", "inject_nan", "checkpoint_every_seconds",
                 "checkpoint_every_steps", "figure3_seeds",
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
    gan_set, gan_features = ctx.gan_pairs
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
            _seed(cfg, 40 + 100 * index)   # the with and without G of a seed start alike
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
    metrics = _figure3_summary(per_seed)
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
    _save_json(os.path.join(report_dir, "figure3.json"),
               {"gan_done": _done_info(ctx.run_dir, "gan"), "metrics": metrics})
    metrics_path = os.path.join(report_dir, "metrics.json")
    if os.path.exists(metrics_path):
        with open(metrics_path) as handle:
            report = json.load(handle)
        report.update(metrics)
        _save_json(metrics_path, report)
    else:
        # a run trained by this stage alone has no report yet: write it from the stages loaded
        # here; it takes the Figure 3 keys from figure3.json
        _write_run_report(cfg, ctx)
    logging.info("figure 3: %s", os.path.join(report_dir, "figure3.png"))
    return metrics


def _figure3_measures(cfg: RunConfig, ctx, trainers: dict, latents_of):
    """({metric: value} of one G seed, {"without"|"with": (F features, H latents)}) of the
    held-out reconstructions of each trainer."""
    from dibigan_tf.evaluation.figures import intra_inter_ratio
    labels = ctx.heldout.labels
    metrics, points = {}, {}
    for name in ("without", "with"):
        recons = trainers[name].reconstruct(ctx.held_features, seed=cfg.seed)
        feats = _unit_rows(ctx.store.features(matcher_images(ctx.matcher, recons)))
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
    latent_fn = tf.function(lambda x: flow.forward(flow_input(x))[0])

    def latents_of(images):
        latents = np.concatenate([latent_fn(uint8_to_unit(images[i:i + batch_size])).numpy()
                                  for i in range(0, len(images), batch_size)])
        return latents.reshape(len(latents), -1)
    return latents_of


def _figure3_summary(per_seed: list) -> dict:
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
                                 lr_decay=fl.lr_decay, max_shift=fl.max_shift,
                                 seed=cfg.seed + 2, jit_compile=cfg.jit_compile,
                                 **loop_kwargs)
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


def _flow_metrics(cfg: RunConfig, flow, prior, train, heldout) -> dict:
    """Held-out bits per dimension: digits with their class's prior and with the mixture; face
    identities are held out whole (H has no prior for them), so faces report the mixture over
    the training people and, with the true prior, the training images' own."""
    if cfg.dataset == "digits":
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


def _check_flow_from_run(cfg: RunConfig):
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
    metrics = _flow_metrics(cfg, flow, prior, train, heldout)
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

