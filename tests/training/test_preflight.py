"""Every check that can run before training does, each a one-line error: flag checks before
anything is written, data checks before any query, a changed split either replaces the recorded
one (nothing trained on it) or names exactly what to delete; train.py prints an error once and
a secret in a URL never reaches config.json or the output."""
import dataclasses
import json
import os

import numpy as np
import pytest

from dibigan_tf.config import MatcherConfig, RunConfig
from dibigan_tf.data.base import ImageSet
from dibigan_tf.training import datasets, rundir
from dibigan_tf.training.common import TrainingError
from dibigan_tf.training.gan import GanConfig
from tests.support import TINY, run_train


def _cfg(**kwargs):
    gan, flow = kwargs.pop("gan", {}), kwargs.pop("flow", {})
    return RunConfig(gan=dataclasses.replace(GanConfig(), **gan),
                     flow=dataclasses.replace(RunConfig().flow, **flow), **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_size=64), r"G's last stage is 32x32 .* images are 64x64"),
    (dict(dataset="faces", image_size=0, gan=dict(start_resolution=8, num_blocks=4)),
     r"G's last stage is 64x64 .* images are 150x150"),
    (dict(dataset="faces", heldout_fraction=1.5, image_size=32), "--heldout_fraction=1.5"),
    (dict(tuning_split=True), "--tuning_split: --dataset=digits has no people"),
    (dict(dataset="faces", heldout_fraction=0.0, image_size=32), "--heldout_fraction=0.0"),
    (dict(gan=dict(batch_sizes=(16, 0, 8))), "--batch_sizes=16,0,8: batch sizes must be positive"),
    (dict(gan=dict(batch_sizes=(16, -4, 8))), "--batch_sizes=16,-4,8"),
    (dict(gan=dict(base_batch_size=0)), "--base_batch_size=0"),
    (dict(eval_positive_pairs=0), "--eval_positive_pairs"),
    (dict(v_variation_draws=1), "--v_variation_draws=1"),
    (dict(gan=dict(biject_reading="latent"), flow=dict(covariance="full")),
     "--biject_reading=latent needs H's diagonal class priors, not --flow_covariance=full"),
])
def test_flag_checks_before_anything_runs(kwargs, message):
    with pytest.raises(TrainingError, match=message) as info:
        rundir.check_config(_cfg(**kwargs), "all")
    assert "\n" not in str(info.value)


def test_flag_checks_follow_the_stage():
    rundir.check_config(_cfg(), "all")                       # the defaults pass
    rundir.check_config(_cfg(image_size=64), "student")      # G is not trained by it
    cfg = _cfg(student=dataclasses.replace(RunConfig().student, batch_size=0))
    with pytest.raises(TrainingError, match="--student_batch_size=0"):
        rundir.check_config(cfg, "student")


def _set(labels):
    labels = np.asarray(labels)
    return ImageSet(np.zeros((len(labels), 8, 8, 1), np.uint8), labels, [str(i) for i in
                                                                        range(labels.max() + 1)])


def test_data_checks_before_any_query():
    with pytest.raises(TrainingError, match="only 15 training images.*at least 16"):
        datasets.check_data(_cfg(), _set(np.arange(15) % 3), _set([0, 0]), report=True)
    datasets.check_data(_cfg(), _set(np.arange(16) % 3), _set([0, 0]), report=True)
    # faces: the report's verification pairs among the held-out people, before anything trains
    faces = _cfg(dataset="faces", eval_positive_pairs=100, eval_negative_pairs=100)
    few = _set([0, 0, 1, 1, 2, 3])                              # 2 positive pairs
    with pytest.raises(TrainingError, match="allow only 2 positive pairs, the report needs 10"):
        datasets.check_data(faces, _set(np.arange(20) % 4), few, report=True)
    datasets.check_data(faces, _set(np.arange(20) % 4), few, report=False)   # --stage=student


def test_a_new_split_replaces_the_old_one_until_a_stage_trained_on_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    datasets.load_dataset(_cfg(max_train_images=100, holdout_per_class=5), str(run))
    first = json.loads((run / "split.json").read_text())
    # nothing trained yet (the feature store of a file/service matcher does not depend on it)
    (run / "features").mkdir()
    (run / "features" / "x").write_text("")
    cfg = _cfg(max_train_images=120, holdout_per_class=5,
               matcher=MatcherConfig(name="http", url="http://127.0.0.1:1/"))
    train, _ = datasets.load_dataset(cfg, str(run))
    assert len(train) == 120 and json.loads((run / "split.json").read_text()) != first
    # a trained stage: the error names split.json and that stage, nothing else
    (run / "student" / "ckpt").mkdir(parents=True)
    (run / "flow").mkdir()                                   # empty: nothing trained
    with pytest.raises(TrainingError) as info:
        datasets.load_dataset(_cfg(max_train_images=100, holdout_per_class=5,
                                   matcher=cfg.matcher), str(run))
    message = str(info.value)
    assert f"delete {run / 'split.json'} and {run / 'student'} (" in message
    assert str(run / "flow") not in message and "features" not in message.split("(")[-2]
    assert "\n" not in message


def _train(tmp_path, *extra, env=None):
    """train.py in a fresh interpreter, as a user's shell starts it (the suite's CLI smoke test:
    the other command lines of the suite are forks of tests/forkserver.py)."""
    return run_train([f"--checkpoint_dir={tmp_path}", "--run_name=pre"] + TINY + list(extra),
                     flagfile=None, timeout=300, env=env, fork=False)


def test_train_py_prints_an_error_once_before_writing_anything(tmp_path):
    run = _train(tmp_path, "--batch_sizes=16,0")
    assert run.returncode == 2, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if "batch sizes must be positive" in line]
    assert lines == ["error: --batch_sizes=16,0: batch sizes must be positive"]
    assert not (tmp_path / "pre").exists()
    # a password in the matcher URL: refused, redacted, never in config.json
    run = _train(tmp_path, "--matcher=http", "--matcher_embedding_dim=3", "--stage=features",
                 "--matcher_url=http://me:hunter2pass@127.0.0.1:1/embed")
    assert run.returncode == 2 and "--matcher_header" in run.stderr
    assert "hunter2pass" not in run.stdout + run.stderr
    assert not (tmp_path / "pre").exists()


def test_a_header_secret_reaches_the_service_and_nothing_else(tmp_path, serve):
    """A real features run with --matcher_header=Name:env:VAR: every request carries the key;
    config.json, the output and the store key never show it."""
    secret = "k3y-from-the-environment-987"
    url, log = serve(require_key=secret)        # 401 without the key
    run = run_train([f"--checkpoint_dir={tmp_path}", "--run_name=web", "--stage=features",
                     "--matcher=http", f"--matcher_url={url}", "--matcher_embedding_dim=3",
                     "--matcher_header=X-Api-Key:env:TEST_MATCHER_SECRET",
                     "--max_train_images=40", "--holdout_per_class=2"],
                    flagfile=None, timeout=300, env={"TEST_MATCHER_SECRET": secret})
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert sum(log) == 60
    config = (tmp_path / "web" / "config.json").read_text()
    assert secret not in config and "X-Api-Key:env:TEST_MATCHER_SECRET" in config
    assert secret not in run.stdout + run.stderr
    for root, _, files in os.walk(tmp_path):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                assert secret.encode() not in handle.read(), name


def test_split_seed_keeps_the_held_out_images_and_pairs_while_the_seed_changes(tmp_path):
    from dibigan_tf.training.pairs import sampled_pairs
    splits, pairs = {}, {}
    for name, seeds in {"a": dict(seed=0), "b": dict(seed=1, split_seed=0),
                        "c": dict(seed=1)}.items():
        run = tmp_path / name
        run.mkdir()
        cfg = _cfg(max_train_images=100, holdout_per_class=5, **seeds)
        _, held = datasets.load_dataset(cfg, str(run))
        splits[name] = json.loads((run / "split.json").read_text())
        pairs[name] = [p.tolist() for p in sampled_pairs(cfg, held.labels)]
        assert cfg.data_seed == (0 if name != "c" else 1)
    assert splits["a"] == splits["b"] and pairs["a"] == pairs["b"]
    assert splits["c"]["heldout"] != splits["a"]["heldout"] and pairs["c"] != pairs["a"]


def test_tuning_split_sets_the_held_out_people_aside_and_splits_the_training_people(
        tmp_path, monkeypatch):
    from dibigan_tf.data.faces import FaceSet
    people = [f"p{k:02d}" for k in range(40)]
    labels = np.repeat(np.arange(40), 3)
    faces = FaceSet(np.zeros((120, 4, 4, 3), np.uint8), labels, people,
                    [f"{people[k]}/{i}.jpg" for i, k in enumerate(labels)])
    monkeypatch.setattr(datasets, "load_faces", lambda cfg: (faces, {}))
    names = {}
    for tuning in (False, True):
        run = tmp_path / f"tuning-{tuning}"
        run.mkdir()
        train, held = datasets.load_dataset(_cfg(dataset="faces", tuning_split=tuning), str(run))
        names[tuning] = set(train.class_names), set(held.class_names)
        split = json.loads((run / "split.json").read_text())
        assert split == {"train": train.paths, "heldout": held.paths}
    final_train, final_heldout = names[False]
    tune_train, tune_people = names[True]
    assert len(final_heldout) == 10 and len(tune_people) == round(30 * 0.25)
    # no held-out person is trained on or tuned on; the tuning people are training people
    assert not final_heldout & (tune_train | tune_people)
    assert tune_people < final_train and tune_train | tune_people == final_train
    assert not tune_train & tune_people
    # off unless asked: a final run reports on the held-out people
    assert RunConfig().tuning_split is False
