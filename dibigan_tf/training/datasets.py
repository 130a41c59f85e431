"""What the pipeline knows of a dataset, loading it, and the run's train/held-out split.

`DATASETS` describes each dataset in one place (how it is loaded, whether its people are held out
whole, its images' own size), so the stages ask the description rather than test its name."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import numpy as np

from absl import logging

from dibigan_tf.config import RunConfig
from dibigan_tf.data.augment import affine_copies, concatenate
from dibigan_tf.data.digits import balanced_holdout_split, load_embedded_digits
from dibigan_tf.data.faces import split_identities
from dibigan_tf.training.common import TrainingError, progress_callback, save_json
from dibigan_tf.training.pairs import pair_counts


def load_dataset(cfg: RunConfig, run_dir: str):
    """(train ImageSet, held-out ImageSet); the split is recorded in the run and checked on
    resume so that a resumed run never trains on a held-out image.

    digits: the embedded MNIST digits, `holdout_per_class` per class held out. faces: the
    identity folders under `data_dir`, aligned onto dlib's face-chip template at `align_size`
    (cached), a seeded `heldout_fraction` of the *people* held out. celeba and tfds (a prepared
    TensorFlow Datasets build) are faces too, listed another way (`load_faces`)."""
    if not dataset_of(cfg).people:
        data = load_embedded_digits()
        train_idx, held_idx = balanced_holdout_split(data.labels, cfg.holdout_per_class,
                                                     cfg.data_seed)
        names = None
    else:
        data, _ = load_faces(cfg)
        train_idx, held_idx = split_identities(data.labels, cfg.heldout_fraction, cfg.data_seed)
        if cfg.tuning_split:
            train_idx, held_idx = tuning_split(data.labels, train_idx, cfg.heldout_fraction,
                                               cfg.data_seed)
        names = data.paths
    if cfg.max_train_images:
        rng = np.random.default_rng(cfg.data_seed)
        keep = rng.permutation(len(train_idx))[:cfg.max_train_images]
        train_idx = np.sort(train_idx[keep])
    split_path = os.path.join(run_dir, "split.json")
    ids = (lambda idx: idx.tolist()) if names is None else (lambda idx: [names[i] for i in idx])
    split = {"train": ids(train_idx), "heldout": ids(held_idx)}
    if os.path.exists(split_path):
        with open(split_path) as handle:
            if json.load(handle) != split:
                _replace_split(cfg, run_dir, split_path)
                save_json(split_path, split)
    else:
        save_json(split_path, split)
    if not dataset_of(cfg).people:
        return data.subset(train_idx), data.subset(held_idx)
    # Face identities are split whole: each side gets its own label range 0..K-1 (H's class
    # priors are over the training people only).
    return _relabel(data.subset(train_idx)), _relabel(data.subset(held_idx))


def tuning_split(labels, train_idx, fraction: float, seed: int):
    """(training indices, tuning indices) inside the training people of a split: the same
    seeded split of people applied to them alone (its own seed), so that settings can be chosen
    on people who are neither trained on nor the held-out people final figures are measured on.
    """
    inner_train, inner_tune = split_identities(labels[train_idx], fraction, f"tune-{seed}")
    return train_idx[inner_train], train_idx[inner_tune]


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


def check_data(cfg: RunConfig, train, heldout, report: bool):
    """The checks that need the split, run before any query or training: enough training
    images, and (when the run ends with its report) enough held-out pairs for it."""
    if len(train) < MIN_TRAIN_IMAGES:
        raise TrainingError(f"only {len(train)} training images after alignment and the split; a "
                            f"run needs at least {MIN_TRAIN_IMAGES} (add images, lower "
                            f"--heldout_fraction or raise --max_train_images)")
    if report and dataset_of(cfg).people:
        pair_counts(cfg, heldout.labels)


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
    dataset = dataset_of(cfg)
    if not dataset.people:
        raise TrainingError(f"--dataset={cfg.dataset} has no photos to align: alignment is for "
                            f"face datasets (--data_dir=...)")
    if not cfg.data_dir:
        raise TrainingError(f"--dataset={cfg.dataset} needs --data_dir (faces: "
                            f"<root>/<identity>/<image>; celeba: the folder with the identity "
                            f"file and the images; tfds: the TFDS data_dir holding the prepared "
                            f"{cfg.tfds_name or 'lfw'})")
    aligner = make_aligner(cfg.align_template, cfg.align_size, cfg.align_multiple, cfg.align_none,
                           cfg.align_upsample)
    cache = cfg.align_cache_dir or os.path.join(cfg.checkpoint_dir, "aligned")
    faces, stats = dataset.read_faces(cfg, aligner, cache, progress_callback("align", "image"))
    logging.info("faces: %d of %d images aligned (%.1f%%), %d identities; %s",
                 stats["aligned"], stats["images"], 100 * stats["aligned_share"],
                 faces.num_classes, {k: v for k, v in stats.items() if k.startswith("status_")})
    stats["cache"] = os.path.join(cache, aligner.key)
    save_json(os.path.join(stats["cache"], "stats.json"), stats)
    return faces, stats


def augment_stages(cfg: RunConfig) -> set:
    """The stages of this run that train on the affine copies (--augment_stages): a whitebox run
    trains no F^S, so "student" is dropped there and its copies are never sent to F."""
    names = {n.strip() for n in cfg.augment_stages.split(",") if n.strip()}
    unknown = names - {"student", "flow", "gan"}
    if unknown:
        raise TrainingError(f"--augment_stages: unknown stage(s) {sorted(unknown)}; choose from "
                            f"student, flow, gan")
    return names - {"student"} if cfg.mode == "whitebox" else names


def attack_images(cfg: RunConfig, train):
    """The attacker's images: the training split, then `augment_copies` fixed affine copies of
    each training image (the copies are drawn again from the seed on every start; they are the
    same images, so the store queries none of them twice)."""
    if not cfg.augment_copies:
        return train
    extra = affine_copies(train, cfg.augment_copies, cfg.seed, mirror_chance=cfg.augment_mirror,
                          mix_chance=cfg.augment_mix)
    logging.info("augmentation: %d affine copies of the %d training images", len(extra),
                 len(train))
    return concatenate(train, extra)


def _read_folders(cfg: RunConfig, aligner, cache, progress):
    """faces: the identity folders under data_dir, or the files of the LFW people file."""
    from dibigan_tf.data.faces import load_face_folders, read_lfw_people
    records = read_lfw_people(cfg.people, cfg.data_dir) if cfg.people else None
    return load_face_folders(cfg.data_dir, aligner, cache, records=records, progress=progress)


def _read_celeba(cfg: RunConfig, aligner, cache, progress):
    """celeba: CelebA's identity file and the photos it names."""
    from dibigan_tf.data.celeba import find_celeba, read_celeba_identities
    from dibigan_tf.data.faces import load_face_folders
    identity_file, root = find_celeba(cfg.data_dir)
    return load_face_folders(root, aligner, cache,
                             records=read_celeba_identities(identity_file, root),
                             progress=progress)


def _read_tfds(cfg: RunConfig, aligner, cache, progress):
    """tfds: the split of a TFDS build prepared under data_dir (never downloaded); its first
    max_train_images examples when that is set. --people and --pairs name LFW's images by file
    number, which a TFDS build does not keep: refused rather than matching nothing."""
    from dibigan_tf.data.tfds_faces import load_tfds_faces
    if cfg.people or cfg.pairs:
        raise TrainingError(f"--{'people' if cfg.people else 'pairs'} names LFW's images by "
                            f"their file numbers, which a TFDS build does not keep; use it with "
                            f"--dataset=faces on LFW's folder")
    return load_tfds_faces(cfg.tfds_name, cfg.data_dir, aligner, cache, split=cfg.tfds_split,
                           max_images=cfg.max_train_images, progress=progress)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What the stages need to know of a dataset (they ask this, never the dataset's name)."""
    name: str
    #: (cfg, aligner, cache dir, progress) -> (FaceSet, alignment stats): a face dataset's photos
    #: (None: the embedded digits)
    read_faces: Callable | None = None
    #: the images' size when --image_size is 0 (None: the aligned crops', --align_size)
    native_size: int | None = None

    @property
    def people(self) -> bool:
        """True for face datasets: identities are held out whole (a seeded share of the people;
        each split is relabelled 0..K-1, H has no class prior for a held-out person, the report's
        gallery is the held-out people's own photos and its pairs are drawn among them). False
        (digits): every class is in both splits, `holdout_per_class` images of each held out."""
        return self.read_faces is not None


DATASETS = {
    "digits": Dataset("digits", native_size=32),
    "faces": Dataset("faces", read_faces=_read_folders),
    "celeba": Dataset("celeba", read_faces=_read_celeba),
    "tfds": Dataset("tfds", read_faces=_read_tfds),
}


def dataset_of(cfg: RunConfig) -> Dataset:
    try:
        return DATASETS[cfg.dataset]
    except KeyError:
        raise TrainingError(f"unknown dataset {cfg.dataset!r} ({', '.join(DATASETS)})") from None


def image_size_of(cfg: RunConfig) -> int:
    """The size F^S, H and G train on: --image_size, else the dataset's own."""
    return cfg.image_size or dataset_of(cfg).native_size or cfg.align_size
