"""A run's directory: its config.json and the checks of a resumed run, the checks of the flags
before any work, the stages' done files, and the per-stage seeds."""
from __future__ import annotations

import json
import os

from dibigan_tf.keras_compat import keras  # noqa: I001  (selects Keras 2 before TF loads)
from absl import logging

from dibigan_tf.config import RunConfig
from dibigan_tf.training.common import TrainingError, make_strategy, save_json
from dibigan_tf.training.datasets import augment_stages, dataset_of, image_size_of
from dibigan_tf.training.gan import check_reading_prior


def check_config(cfg: RunConfig, stage: str = "all"):
    """Every check of the flags that needs no data, run before anything is aligned, queried or
    trained: a TrainingError with a one-line reason."""
    if dataset_of(cfg).people and not 0.0 < cfg.heldout_fraction < 1.0:
        raise TrainingError(f"--heldout_fraction={cfg.heldout_fraction}: must be between 0 and 1 "
                            f"(the share of the people held out)")
    if cfg.tuning_split and not dataset_of(cfg).people:
        raise TrainingError(f"--tuning_split: --dataset={cfg.dataset} has no people to set "
                            f"aside (the split of people is for face datasets)")
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
        size = image_size_of(cfg)
        last = g.start_resolution * 2 ** (g.num_blocks - 1)
        if last != size:
            raise TrainingError(f"G's last stage is {last}x{last} (--start_resolution="
                                f"{g.start_resolution}, --num_blocks={g.num_blocks}) but the images "
                                f"are {size}x{size} (--image_size); make them equal")
        if cfg.v_variation_draws == 1:
            raise TrainingError("--v_variation_draws=1: the spread across v needs at least 2 "
                                "draws (0: not measured)")
        if min(cfg.eval_positive_pairs, cfg.eval_negative_pairs) <= 0:
            raise TrainingError("--eval_positive_pairs and --eval_negative_pairs must be positive")
        if g.use_biject:
            check_reading_prior(g.biject_reading, cfg.flow.covariance)


def open_run(cfg: RunConfig, loop_kwargs: dict | None):
    """(run dir, created, with this run's config.json; the strategy; the loop's keyword
    arguments with the run's checkpoint periods)."""
    augment_stages(cfg)   # a bad stage name stops the run before anything trains
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
    save_json(config_path, cfg.to_dict())
    strategy = make_strategy(cfg.strategy, cfg.num_gpus or None)
    loop_kwargs = dict(loop_kwargs or {})
    loop_kwargs.setdefault("checkpoint_every_seconds", cfg.checkpoint_every_seconds)
    loop_kwargs.setdefault("checkpoint_every_steps", cfg.checkpoint_every_steps)
    return run_dir, strategy, loop_kwargs


def _check_same_precision(old: dict, cfg: RunConfig):
    """A run's checkpoints hold its optimizers as built for its precision policy (a loss-scaled
    optimizer under mixed_float16), so a resumed run must keep the policy it started with."""
    before = old.get("mixed_precision", "float32")
    if before != cfg.mixed_precision:
        raise TrainingError(f"run {cfg.run_name} was started with --mixed_precision={before}; "
                            f"resume it with the same policy, or give another --run_name")


# Settings that change how a run is driven, not what it trains (stop_after_steps and inject_nan:
# test hooks that older config.json files still hold).
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


def feature_store_root(cfg: RunConfig, run_dir: str) -> str:
    """Where F's answers are kept: inside the run for the LeNet the run trains itself, shared by
    every run under `<checkpoint_dir>/features/<matcher key>/` for a matcher opened from a file
    or service (so a later run queries none of the images an earlier one stored)."""
    if cfg.matcher.name == "lenet":
        return os.path.join(run_dir, "features")
    return cfg.feature_store_dir or os.path.join(cfg.checkpoint_dir, "features")


def seed_stage(cfg: RunConfig, offset: int):
    """Seeds Python, numpy and TensorFlow before a stage builds its networks and steps, so a
    stage's initial weights and random streams depend on --seed and the stage alone (not on which
    stages ran before it in this process)."""
    keras.utils.set_random_seed(cfg.seed * 1000 + offset)
