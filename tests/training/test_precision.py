"""--mixed_precision: F^S and G/D compute in half precision with float32 variables and outputs;
mixed_float16 scales the loss; H stays float32; a run keeps the policy it started with."""
import json

import numpy as np
import pytest
import tensorflow as tf

from dibigan_tf.config import RunConfig
from dibigan_tf.keras_compat import keras
from dibigan_tf.training import precision
from dibigan_tf.training.common import TrainingError, make_strategy
from dibigan_tf.training.flow import make_flow
from dibigan_tf.training.gan import GanConfig, GanTrainer
from dibigan_tf.training.rundir import open_run
from dibigan_tf.training.student import train_student
from tests.support import tiny_gan_batch


def _tiny_trainer(tmp_path, policy):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 16, 16, 1)).astype(np.uint8)
    feats = rng.standard_normal((32, 12)).astype(np.float32)
    labels = np.repeat(np.arange(4), 8)
    strategy = make_strategy("default")
    student, _ = train_student(str(tmp_path / "s"), strategy, images, feats, width=4,
                               epochs=1, batch_size=16, mixed_precision=policy)
    flow, _ = make_flow(strategy, (16, 16, 1), 4, num_steps=2, hidden_channels=4,
                        num_res_blocks=1)
    cfg = GanConfig(start_resolution=8, num_blocks=2, g_channels=(8, 8), d_channels=(8, 8),
                    mapping_layers=2, mapping_dim=8, latent_dim=4, stable_images=(32, 32),
                    fade_images=(0, 32), batch_sizes=(16, 16), mixed_precision=policy,
                    cache_real_targets=False)
    trainer = GanTrainer(str(tmp_path / "g"), strategy, cfg, images, feats, labels,
                         student=student, flow=flow)
    return trainer, student, flow, images, feats, labels


# bfloat16 runs the same code path without the loss scale (its layers are checked by
# test_policy_scope_restores_and_refuses_unknown_names below), so it is left to `make test-all`
@pytest.mark.parametrize("policy,half", [
    ("mixed_float16", tf.float16),
    pytest.param("mixed_bfloat16", tf.bfloat16, marks=pytest.mark.slow)])
def test_gan_and_student_train_in_half_precision(tmp_path, policy, half):
    keras.utils.set_random_seed(0)
    trainer, student, flow, images, feats, labels = _tiny_trainer(tmp_path, policy)
    assert keras.mixed_precision.global_policy().name == "float32"   # put back after building
    G, D = trainer.generator, trainer.discriminator
    # half-precision arithmetic, float32 variables, float32 outputs
    assert G.compute_dtype == D.compute_dtype == student.compute_dtype == half.name
    assert all(w.dtype == tf.float32 for w in G.weights + D.weights + student.weights)
    assert all(o.dtype == tf.float32 for o in student.outputs)
    assert all(v.dtype == tf.float32 for v in flow.trainable_variables)
    assert precision.is_loss_scaled(trainer.g_opt) == (policy == "mixed_float16")
    assert precision.is_loss_scaled(trainer.d_opt) == (policy == "mixed_float16")

    # fade-in steps (alpha blending, gradient penalty, F^S and H on the fake) then stable ones;
    # under mixed_float16 the first steps may overflow at the initial loss scale (2^15): the
    # optimizer then skips them and halves the scale, so a few steps are run
    before = [w.numpy().copy() for w in G.trainable_weights]
    for phase in [p for p in trainer.schedule.phases() if p.stage == 1]:
        step = trainer.make_step(phase)
        for k in range(8):
            out = step(tiny_gan_batch(trainer, images, feats, labels, k),
                       *trainer.step_args(phase.start_image))
            for key, value in out.items():
                assert value.dtype == tf.float32 and np.isfinite(value.numpy()), (key, value)
        assert step.trace_counter["traces"] == 1
    moved = [float(np.abs(w.numpy() - b).max()) for w, b in zip(G.trainable_weights, before)]
    assert max(moved) > 0
    assert all(np.isfinite(w.numpy()).all() for w in G.weights + D.weights)
    fake = G(tf.zeros([2, 4]), tf.zeros([2, 12]), stage=1, alpha=tf.constant(0.5))
    assert fake.dtype == tf.float32 and fake.shape == (2, 16, 16, 1)


def test_loss_scaled_gradients_equal_the_plain_ones():
    var = tf.Variable([1.0, -2.0])
    plain = keras.optimizers.SGD(0.1)
    scaled = precision.wrap_optimizer(keras.optimizers.SGD(0.1), "mixed_float16")
    for opt in (plain, scaled):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(var ** 2) * 1e-3
            s = precision.scale_loss(opt, loss)
        if opt is scaled:
            assert float(s) == pytest.approx(float(loss) * float(opt.loss_scale))
        grads = precision.gradients(tape, opt, s, [var])
        np.testing.assert_allclose(grads[0].numpy(), [2e-3, -4e-3], rtol=1e-6)
    # an overflowing step is skipped and the scale halved (what `gradients` documents)
    before, scale = var.numpy().copy(), float(scaled.loss_scale)
    with tf.GradientTape() as tape:
        s = precision.scale_loss(scaled, tf.reduce_sum(var) * 3e38)
    scaled.apply_gradients(zip(precision.gradients(tape, scaled, s, [var]), [var]))
    np.testing.assert_array_equal(var.numpy(), before)
    assert float(scaled.loss_scale) == scale / 2


def test_run_config_is_the_one_source_of_the_speed_flags():
    cfg = RunConfig(mixed_precision="mixed_bfloat16", jit_compile=True)
    assert cfg.gan.mixed_precision == "mixed_bfloat16" and cfg.gan.jit_compile
    assert cfg.to_dict()["gan"]["mixed_precision"] == "mixed_bfloat16"


def test_policy_scope_restores_and_refuses_unknown_names():
    with precision.policy_scope("mixed_bfloat16"):
        assert keras.layers.Dense(2).compute_dtype == "bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(ValueError, match="--mixed_precision must be one of"):
        precision.check_policy("float16")


def test_a_run_keeps_the_policy_it_started_with(tmp_path):
    cfg = RunConfig(run_name="r", checkpoint_dir=str(tmp_path))
    open_run(cfg, None)
    saved = json.load(open(tmp_path / "r" / "config.json"))
    assert saved["mixed_precision"] == "float32"
    other = RunConfig(run_name="r", checkpoint_dir=str(tmp_path), mixed_precision="mixed_float16")
    with pytest.raises(TrainingError, match="started with --mixed_precision=float32"):
        open_run(other, None)
