"""Small helpers of the pipeline: augment stage names, config changes between runs."""
import json

import pytest


def test_unknown_augment_stage_is_a_one_line_error():
    from dibigan_tf.config import RunConfig
    from dibigan_tf.training.common import TrainingError
    from dibigan_tf.training.datasets import augment_stages
    assert augment_stages(RunConfig(augment_stages="student, gan")) == {"student", "gan"}
    assert augment_stages(RunConfig(augment_stages="")) == set()
    with pytest.raises(TrainingError, match="unknown stage.*'matcher'"):
        augment_stages(RunConfig(augment_stages="student,matcher"))


def test_config_changes_name_the_training_settings_that_differ():
    from dibigan_tf.config import RunConfig
    from dibigan_tf.training.rundir import config_changes
    old = json.loads(json.dumps(RunConfig().to_dict()))
    new = RunConfig(checkpoint_every_seconds=5, augment_copies=2)
    new.gan.learning_rate = 0.004
    new = json.loads(json.dumps(new.to_dict()))
    assert config_changes(old, new) == ["augment_copies: 0 -> 2",
                                        "gan.learning_rate: 0.0015 -> 0.004"]
    assert config_changes(old, old) == []


def test_bad_augment_stage_stops_the_run_before_anything_is_written(tmp_path):
    from dibigan_tf.config import RunConfig
    from dibigan_tf.training.common import TrainingError
    from dibigan_tf.training.rundir import open_run
    with pytest.raises(TrainingError, match="--augment_stages"):
        open_run(RunConfig(checkpoint_dir=str(tmp_path), augment_stages="flwo"), None)
    assert list(tmp_path.iterdir()) == []


def test_attack_images_are_the_split_then_its_copies():
    import numpy as np
    from dibigan_tf.config import RunConfig
    from dibigan_tf.data.digits import load_embedded_digits
    from dibigan_tf.training.datasets import attack_images
    train = load_embedded_digits().subset(np.arange(0, 5000, 500))
    assert attack_images(RunConfig(), train) is train
    attack = attack_images(RunConfig(augment_copies=2, seed=5), train)
    assert len(attack) == 30 and attack.labels.tolist() == train.labels.tolist() * 3
    np.testing.assert_array_equal(attack.images[:10], train.images)
    np.testing.assert_array_equal(attack.images[10:],
                                  attack_images(RunConfig(augment_copies=2, seed=5),
                                                 train).images[10:])


def test_figure3_summary_over_seeds():
    import numpy as np
    from dibigan_tf.training.figure3 import figure3_summary

    def seed(without, with_, without_h, with_h):
        return {"biject_intra_inter_ratio_without": without,
                "biject_intra_inter_ratio_with": with_,
                "biject_intra_inter_ratio_without_h": without_h,
                "biject_intra_inter_ratio_with_h": with_h}

    one = seed(0.5, 0.4, 0.7, 0.8)
    assert figure3_summary([one]) == one          # one seed: the keys as they were
    out = figure3_summary([one, seed(0.4, 0.5, 0.6, 0.5), seed(0.6, 0.3, 0.9, 0.7)])
    assert out["biject_figure3_seeds"] == 3
    assert out["biject_intra_inter_ratio_with_per_seed"] == [0.4, 0.5, 0.3]
    assert out["biject_intra_inter_ratio_with"] == pytest.approx(0.4)
    assert out["biject_intra_inter_ratio_without"] == pytest.approx(0.5)
    # with - without: -0.1, +0.1, -0.3 (F); +0.1, -0.1, -0.2 (H)
    assert out["biject_intra_inter_ratio_seeds_tighter"] == 2
    assert out["biject_intra_inter_ratio_h_seeds_tighter"] == 2
    assert out["biject_intra_inter_ratio_std_diff"] == pytest.approx(0.2)
    assert out["biject_intra_inter_ratio_h_std_diff"] == pytest.approx(
        float(np.std([0.1, -0.1, -0.2], ddof=1)))


def test_learning_rate_cosine_decays_to_zero_and_resumes_on_the_same_curve():
    import numpy as np
    import tensorflow as tf
    from dibigan_tf.training.common import build_optimizer, learning_rate_schedule
    assert learning_rate_schedule(1e-3, "constant", 100, 1) == 1e-3
    with pytest.raises(ValueError, match="lr_decay"):
        learning_rate_schedule(1e-3, "linear", 100, 1)
    # 1,580 images in batches of 16: the 99 steps of run_phase, the last one short
    assert learning_rate_schedule(1e-3, "cosine", 1580, 16).decay_steps == 99
    schedule = learning_rate_schedule(1e-3, "cosine", 100, 1)
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(50)) == pytest.approx(5e-4, rel=1e-4)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)
    # Adam's step follows the optimizer's step count: the size of one update at
    # step 99 of 100 (tiny step) after a restore of the counter, as a resumed run would have it
    v = tf.Variable(np.zeros(3, np.float32))
    opt = build_optimizer(tf.distribute.get_strategy(), [v], schedule)
    opt.iterations.assign(99)
    opt.apply_gradients([(tf.constant([1.0, -1.0, 2.0]), v)])
    # Adam's first moments after one gradient, bias-corrected at t = 100: the step is
    # lr * sqrt(1 - 0.999^100) / (1 - 0.9^100) * 0.1 / sqrt(0.001), with lr = schedule(99)
    expected = float(schedule(99)) * np.sqrt(1 - 0.999 ** 100) / (1 - 0.9 ** 100) * 0.1 / np.sqrt(
        0.001)
    np.testing.assert_allclose(np.abs(v.numpy()), expected, rtol=1e-3)
    assert float(schedule(99)) < 1e-6


def test_a_checkpoint_missing_network_weights_is_refused_not_half_loaded(tmp_path):
    import tensorflow as tf
    from dibigan_tf.keras_compat import keras
    from dibigan_tf.training.common import Stage, TrainingError, build_optimizer
    strategy = tf.distribute.get_strategy()

    def model(layers):
        m = keras.Sequential([keras.layers.Dense(3) for _ in range(layers)])
        m.build((None, 3))
        return m

    one = model(1)
    stage = Stage(str(tmp_path), "s", strategy, {"model": one, "optimizer": build_optimizer(
        strategy, one.trainable_variables, 1e-3)})
    stage.step.assign(7)
    stage.save()
    # the same network, a schedule instead of a float learning rate: resumes
    same = model(1)
    again = Stage(str(tmp_path), "s", strategy, {"model": same, "optimizer": build_optimizer(
        strategy, same.trainable_variables, keras.optimizers.schedules.CosineDecay(1e-3, 10))})
    assert again.restore() and int(again.step.numpy()) == 7
    # a float learning rate other than the saved one: the flag's value wins over the checkpoint's
    other = model(1)
    faster = build_optimizer(strategy, other.trainable_variables, 5e-2)
    assert Stage(str(tmp_path), "s", strategy, {"model": other, "optimizer": faster}).restore()
    assert abs(float(faster.learning_rate) - 5e-2) < 1e-9
    for a, b in zip(same.weights, one.weights):
        assert (a.numpy() == b.numpy()).all()
    # a deeper network than the one saved: its second layer is not in the checkpoint
    deeper = model(2)
    bad = Stage(str(tmp_path), "s", strategy, {"model": deeper})
    with pytest.raises(TrainingError, match="does not hold every weight"):
        bad.restore()


def test_flow_from_run_with_other_shape_flags_is_refused(tmp_path):
    from dibigan_tf.config import FlowConfig, RunConfig
    from dibigan_tf.training.common import TrainingError
    from dibigan_tf.training.stages import check_flow_from_run
    h = tmp_path / "h"
    (h / "flow").mkdir(parents=True)
    (h / "flow" / "done.json").write_text("{}")
    (h / "config.json").write_text(json.dumps(RunConfig(flow=FlowConfig(num_steps=5)).to_dict()))
    check_flow_from_run(RunConfig(flow=FlowConfig(num_steps=5, epochs=3, from_run=str(h))))
    with pytest.raises(TrainingError, match="--flow_steps=5 there, 3 here"):
        check_flow_from_run(RunConfig(flow=FlowConfig(num_steps=3, from_run=str(h))))


def test_flow_trains_on_whole_pixel_shifts_with_background_zero(tmp_path):
    import numpy as np
    import tensorflow as tf
    from dibigan_tf.data.augment import random_shift
    from dibigan_tf.training.flow import train_flow
    pixels = tf.reshape(tf.range(1.0, 17.0), [1, 4, 4, 1])
    # draw (0, 0) of 5 positions per axis: the image moves down-right by 2, zeros come in
    moved = random_shift(pixels, 2, tf.constant([[0.0, 0.0]]), background=0.0).numpy()[0, ..., 0]
    np.testing.assert_array_equal(moved[:2], 0)
    np.testing.assert_array_equal(moved[:, :2], 0)
    np.testing.assert_array_equal(moved[2:, 2:], pixels.numpy()[0, :2, :2, 0])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 8, 8, 1)).astype(np.uint8)
    flow, prior = train_flow(str(tmp_path), tf.distribute.get_strategy(), images,
                             np.repeat(np.arange(2), 16), 2, num_steps=1, hidden_channels=4,
                             num_res_blocks=1, epochs=1, batch_size=16, max_shift=1,
                             log_every=1)
    assert all(np.isfinite(v.numpy()).all() for v in flow.trainable_variables)


def test_student_learning_rate_follows_student_lr_decay(tmp_path):
    """--student_lr_decay=cosine: F^S's Adam step falls to 0 over its run's steps; "constant"
    (the default) keeps it."""
    import numpy as np
    import tensorflow as tf
    from dibigan_tf.training.student import train_student
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 16, 16, 1)).astype(np.uint8)
    feats = rng.standard_normal((32, 6)).astype(np.float32)
    rates = {}
    for decay in ("cosine", "constant"):
        _, stage = train_student(str(tmp_path / decay), tf.distribute.get_strategy(), images,
                                 feats, width=4, epochs=2, batch_size=16, learning_rate=1e-3,
                                 lr_decay=decay, max_shift=0, log_every=1)
        opt = stage.checkpoint.optimizer
        assert int(stage.step.numpy()) == int(opt.iterations.numpy()) == 4
        rates[decay] = float(opt.learning_rate)   # the step of the last update (the 4th)
    # a half cosine over the run's 4 steps: at the last update's step count (3), then 0 at 4
    assert rates["cosine"] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 3 / 4)), rel=1e-5)
    assert rates["constant"] == pytest.approx(1e-3)
