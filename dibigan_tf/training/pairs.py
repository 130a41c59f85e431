"""Verification pairs among a run's held-out people: how many the report uses, sampled pairs,
and the pairs of an LFW pairs file whose two images are held out."""
from __future__ import annotations

import os

import numpy as np

from absl import logging

from dibigan_tf.config import RunConfig
from dibigan_tf.training.common import TrainingError


def pair_counts(cfg: RunConfig, labels):
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


def report_pair_counts(cfg: RunConfig, labels, people: bool):
    """(positives, negatives) of the report's verification pairs: with people held out whole,
    as many as they allow (`pair_counts`); otherwise (digits) the flags' counts."""
    if people:
        return pair_counts(cfg, labels)
    return cfg.eval_positive_pairs, cfg.eval_negative_pairs


def sampled_pairs(cfg: RunConfig, labels):
    """Verification pairs among the held-out people: as many positives as they allow, up to
    `eval_positive_pairs`, and as many negatives."""
    from dibigan_tf.evaluation import verification as ver
    try:
        num, _ = pair_counts(cfg, labels)
    except TrainingError:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    return ver.make_pairs(labels, num, num, seed=cfg.data_seed)


def pairs_file_indices(path, held, data_dir=""):
    """Indices into `held` of the LFW pairs file's pairs whose two images are held out (an
    image found as evaluate.py finds it: `PairFiles` of the data root, else LFW's naming)."""
    from dibigan_tf.data.faces import PairFiles, index_pairs, lfw_file_name, read_lfw_pairs
    find = PairFiles(data_dir) if data_dir and os.path.isdir(data_dir) else None

    def file_of(name, number):   # "<identity>/<file>"
        found = find(name, number) if find else None
        return "/".join((found or lfw_file_name(name, number)).replace(os.sep, "/")
                        .split("/")[-2:])
    where = {}
    for i, rel in enumerate(held.paths):
        parts = rel.replace(os.sep, "/").split("/")
        where["/".join(parts[-2:])] = i
    pairs = read_lfw_pairs(path)
    a, b, same, _ = index_pairs(pairs, file_of, where)
    logging.info("%s: %d of %d pairs have both images held out and aligned", path, len(a),
                 len(pairs))
    return a, b, same
