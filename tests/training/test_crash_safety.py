"""Crash safety: a NaN loss stops the run naming the loss, stage and step with the last good
checkpoint intact; SIGKILL in the student and flow trainings resumes to the same step counts as
an uninterrupted run (the GAN's is in test_pipeline_resume.py)."""
import json
import os
import re
import signal

import numpy as np
import pytest
import tensorflow as tf

from dibigan_tf.training.common import Stage, TrainingError
from dibigan_tf.training.loops import run_phase
from tests import forkserver
from tests.support import TINY_KILLABLE, StepReached, latest_step as _latest_step, train_command


def _toy_stage(tmp_path):
    strategy = tf.distribute.get_strategy()
    w = tf.Variable([1.0, 2.0])
    stage = Stage(str(tmp_path), "toy", strategy, {"w": w})

    @tf.function
    def step(batch):
        w.assign_add(tf.reduce_mean(batch["x"]) * tf.ones([2]))
        return {"loss": tf.reduce_sum(w), "other": tf.constant(1.0)}
    return stage, step, w


def test_nan_stops_the_phase_naming_it_and_keeps_the_last_good_checkpoint(tmp_path):
    stage, step, w = _toy_stage(tmp_path)
    arrays = {"x": np.ones((8, 1), np.float32)}
    with pytest.raises(TrainingError, match=r"loss 'loss' is nan in stage toy at step 4"):
        run_phase(stage, step, arrays, 2, 40, seed=0, checkpoint_every_steps=1,
                  inject_nan="toy:4")
    assert not stage.is_done()
    assert _latest_step(str(tmp_path / "toy" / "ckpt")) == 3    # step 4 was never saved
    # the kept checkpoint restores the finite weights of step 3, and training goes on from it
    fresh, step2, w2 = _toy_stage(tmp_path)
    assert fresh.restore() and int(fresh.step.numpy()) == 3
    np.testing.assert_allclose(w2.numpy(), [1.0 + 3, 2.0 + 3])
    run_phase(fresh, step2, arrays, 2, 40, seed=0, checkpoint_every_steps=1)
    assert int(fresh.step.numpy()) == 20 and np.isfinite(w2.numpy()).all()


def _command(tmp_path, stage, *extra):
    return train_command([f"--checkpoint_dir={tmp_path}", "--run_name=crash",
                          f"--stage={stage}"] + TINY_KILLABLE + [
                          "--augment_copies=0", "--student_epochs=4", "--flow_epochs=4",
                          "--eval_positive_pairs=100", "--eval_negative_pairs=100"] + list(extra),
                         flagfile=None)


def _kill_and_resume(tmp_path, stage_flag, stage_dir, expected_steps):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    ckpt = tmp_path / "crash" / stage_dir / "ckpt"
    step_5 = StepReached(ckpt, 5)
    first = forkserver.run(_command(tmp_path, stage_flag), env=env, timeout=600,
                           kill_when=step_5)
    killed = step_5.seen
    assert first.returncode == -signal.SIGKILL and killed >= 5, (
        first.returncode, (first.stdout + first.stderr)[-3000:])
    assert not (tmp_path / "crash" / stage_dir / "done.json").exists()
    again = forkserver.run(_command(tmp_path, stage_flag), env=env, timeout=600)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    match = re.search(rf"{stage_dir}: resuming at step (\d+)", out)
    assert match and int(match.group(1)) >= killed, out[-3000:]
    done = json.loads((tmp_path / "crash" / stage_dir / "done.json").read_text())
    assert done["step"] == expected_steps, done
    return done


@pytest.mark.slow   # the same loop's resume path is tested in the default run by the GAN's
def test_sigkill_in_student_and_flow_trainings_resume_to_the_same_step_counts(tmp_path):
    # 400 training digits, 4 epochs, batch 64: 1600 images = 25 steps, as uninterrupted
    done = _kill_and_resume(tmp_path, "student", "student", 1600 // 64)
    assert done["images_seen"] == 1600
    done = _kill_and_resume(tmp_path, "flow", "flow", 1600 // 64)
    assert done["images_seen"] == 1600


@pytest.mark.slow   # the guard itself is tested in the default run (test above, in-process)
def test_planted_nan_stops_a_run_with_a_one_line_error(tmp_path):
    run = forkserver.run(_command(tmp_path, "student", "--inject_nan=student:6"), timeout=600)
    assert run.returncode == 2
    assert "loss 'loss' is nan in stage student at step 6" in run.stderr
    assert _latest_step(str(tmp_path / "crash" / "student" / "ckpt")) == 5
    assert not (tmp_path / "crash" / "student" / "done.json").exists()


def _warnings(monkeypatch):
    import dibigan_tf.training.common as common
    seen = []
    monkeypatch.setattr(common.logging, "warning", lambda msg, *args: seen.append(msg % args))
    return seen


def _three_checkpoints(tmp_path):
    stage, step, w = _toy_stage(tmp_path)
    for k in (1, 2, 3):
        w.assign([float(k), float(k)])
        stage.step.assign(k)
        stage.save()
    return os.path.join(str(tmp_path), "toy", "ckpt")


@pytest.mark.parametrize("damage", ["truncated_data", "empty_index"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, monkeypatch,
                                                                          damage):
    ckpt = _three_checkpoints(tmp_path)
    latest = os.path.join(ckpt, "ckpt-3")
    if damage == "truncated_data":
        data = latest + ".data-00000-of-00001"
        content = open(data, "rb").read()
        open(data, "wb").write(content[:len(content) // 2])
    else:
        open(latest + ".index", "wb").close()
    warnings = _warnings(monkeypatch)
    stage, _, w = _toy_stage(tmp_path)
    assert stage.restore() and int(stage.step.numpy()) == 2
    np.testing.assert_allclose(w.numpy(), [2.0, 2.0])
    assert len(warnings) == 1
    assert latest in warnings[0] and os.path.join(ckpt, "ckpt-2") in warnings[0]


def test_a_finished_stage_with_a_damaged_final_checkpoint_trains_on(tmp_path, monkeypatch):
    ckpt = _three_checkpoints(tmp_path)
    stage, _, _ = _toy_stage(tmp_path)
    stage.restore()
    stage.mark_done()     # saves ckpt-3 again and writes done.json
    open(os.path.join(ckpt, "ckpt-3.index"), "wb").close()
    warnings = _warnings(monkeypatch)
    again, _, _ = _toy_stage(tmp_path)
    assert again.restore() and int(again.step.numpy()) == 2
    assert not again.is_done() and len(warnings) == 2 and "trains on" in warnings[1]


def test_every_checkpoint_damaged_and_a_damaged_state_file(tmp_path, monkeypatch):
    ckpt = _three_checkpoints(tmp_path)
    # the state file cut to garbage: rebuilt from the checkpoints present
    with open(os.path.join(ckpt, "checkpoint"), "w") as handle:
        handle.write('model_checkpoint_path: "ckpt-3\n{{{')
    warnings = _warnings(monkeypatch)
    stage, _, _ = _toy_stage(tmp_path)
    assert stage.restore() and int(stage.step.numpy()) == 3
    assert any("state file" in w for w in warnings)
    for k in (1, 2, 3):
        open(os.path.join(ckpt, f"ckpt-{k}.index"), "wb").close()
    with pytest.raises(TrainingError, match=r"every checkpoint in .*ckpt is damaged.*delete"):
        _toy_stage(tmp_path)[0].restore()
