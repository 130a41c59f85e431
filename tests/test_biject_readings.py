"""Eq. 4 and Eq. 5 under every reading of `--biject_reading`, against float64 references."""
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from dibigan_tf import losses
from tests.support import TINY_GAN, stable_phase, tiny_gan_batch, tiny_gan_data


def _stats_reference(z, reading):
    """Per-image summary of z [b, h, w, c] (float64): what Eq. 4 compares under a reading."""
    b, h, w, c = z.shape
    s = z.reshape(b, h * w, c)
    mu = s.mean(axis=1)
    if reading == "spatial":
        return [(m, np.sqrt(((x - m) ** 2).mean(axis=0) + 1e-6)) for x, m in zip(s, mu)]
    if reading == "spatial_full":
        return [(m, (x - m).T @ (x - m) / (h * w)) for x, m in zip(s, mu)]
    return [(x.reshape(-1) / np.sqrt(h * w),) for x in z]


def _w2_reference(a, b, reading):
    if reading == "spatial":
        return np.sum((a[0] - b[0]) ** 2) + np.sum((a[1] - b[1]) ** 2)
    if reading == "spatial_full":
        r1 = scipy.linalg.sqrtm(a[1]).real
        cross = scipy.linalg.sqrtm(r1 @ b[1] @ r1).real
        return np.sum((a[0] - b[0]) ** 2) + np.trace(a[1] + b[1] - 2 * cross)
    return np.sum((a[0] - b[0]) ** 2)


def _biject_reference(fake, real, labels, margin, reading, table=None):
    """L_biject per example in float64: Eq. 4 to the real latent plus Eq. 5 (mean over the
    other reconstructions: d for the same identity, max(0, m - d) otherwise)."""
    f, r = _stats_reference(fake, reading), _stats_reference(real, reading)
    n = len(f)
    out = np.zeros(n)
    for i in range(n):
        out[i] = _w2_reference(f[i], r[i], reading)
        pair = 0.0
        for j in range(n):
            if i == j:
                continue
            d = _w2_reference(f[i], f[j], reading)
            if table is not None:
                d += table[labels[i], labels[j]]
            pair += d if labels[i] == labels[j] else max(0.0, margin - d)
        out[i] += pair / max(n - 1, 1)
    return out


def _latents(seed, shape=(5, 4, 4, 3)):
    rng = np.random.default_rng(seed)
    # correlated channels, so that the full covariance differs from its diagonal
    mix = rng.standard_normal((shape[-1], shape[-1]))
    return rng.standard_normal(shape) @ mix


@pytest.mark.parametrize("reading", losses.BIJECT_READINGS)
def test_eq4_matches_float64_reference(reading):
    a, b = _latents(0), _latents(1)
    got = losses.latent_w2(tf.constant(a), tf.constant(b), reading).numpy()
    fa, fb = _stats_reference(a, reading), _stats_reference(b, reading)
    want = [_w2_reference(x, y, reading) for x, y in zip(fa, fb)]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("reading", losses.BIJECT_READINGS)
def test_eq5_pairwise_matches_float64_reference(reading):
    a = _latents(2)
    s = losses.latent_summary(tf.constant(a), reading)
    got = losses.pairwise_summary_w2(s, s, reading).numpy()
    f = _stats_reference(a, reading)
    want = np.array([[_w2_reference(x, y, reading) for y in f] for x in f])
    np.testing.assert_allclose(got, np.maximum(want, 0.0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reading", losses.BIJECT_READINGS)
def test_biject_loss_matches_float64_reference(reading):
    fake, real = _latents(3), _latents(4)
    labels = np.array([0, 1, 0, 2, 1])
    table = None
    if reading == "latent":
        scales = np.exp(np.random.default_rng(5).normal(0, 0.3, size=(3, 4 * 4 * 3)))
        table = losses.prior_w2_table(scales, positions=16).astype(np.float64)
        want_table = np.array([[np.sum((scales[k] - scales[l]) ** 2) / 16 for l in range(3)]
                               for k in range(3)])
        np.testing.assert_allclose(table, want_table, rtol=1e-5, atol=1e-7)
    margin = 20.0
    got = losses.biject_loss(tf.constant(fake), tf.constant(real), tf.constant(labels), margin,
                             reading=reading, prior_table=table).numpy()
    want = _biject_reference(fake, real, labels, margin, reading, table)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_only_the_latent_reading_sees_where_things_are():
    z = _latents(6, (2, 8, 8, 4))
    mirrored = z[:, :, ::-1, :]
    spatial = losses.latent_w2(tf.constant(z), tf.constant(mirrored), "spatial").numpy()
    full = losses.latent_w2(tf.constant(z), tf.constant(mirrored), "spatial_full").numpy()
    latent = losses.latent_w2(tf.constant(z), tf.constant(mirrored), "latent").numpy()
    np.testing.assert_allclose(spatial, 0.0, atol=1e-9)
    np.testing.assert_allclose(full, 0.0, atol=1e-5)
    want = np.sum((z - mirrored) ** 2, axis=(1, 2, 3)) / 64
    np.testing.assert_allclose(latent, want, rtol=1e-9)
    assert np.all(latent > 1.0)


def test_only_the_full_reading_sees_channel_correlations():
    x = np.random.default_rng(7).standard_normal((1, 16, 16, 1))
    x -= x.mean()
    a = np.concatenate([x, x], -1)        # channels correlated +1
    b = np.concatenate([x, -x], -1)       # the same means and variances, correlated -1
    spatial = losses.latent_w2(tf.constant(a), tf.constant(b), "spatial").numpy()
    full = losses.latent_w2(tf.constant(a), tf.constant(b), "spatial_full").numpy()
    np.testing.assert_allclose(spatial, 0.0, atol=1e-9)
    # W2 between N(0, v[[1,1],[1,1]]) and N(0, v[[1,-1],[-1,1]]): 4v (the cross term is 0)
    np.testing.assert_allclose(full, 4 * np.var(x), rtol=1e-4)


@pytest.mark.parametrize("reading", losses.BIJECT_READINGS)
def test_gradients_are_finite_for_identical_and_degenerate_latents(reading):
    z = np.zeros((3, 4, 4, 3))
    z[1] = 1.0                     # constant latent: a zero covariance
    z[2] = _latents(8, (1, 4, 4, 3))[0]
    fake = tf.Variable(z)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses.biject_loss(fake, tf.constant(z), tf.constant([0, 0, 1]),
                                                margin=3.0, reading=reading))
    grad = tape.gradient(loss, fake).numpy()
    assert np.all(np.isfinite(grad))


def test_unknown_reading_is_refused():
    with pytest.raises(ValueError, match="choose from"):
        losses.check_biject_reading("pixels")


@pytest.mark.parametrize("reading", ["spatial_full", "latent"])
def test_a_gan_step_trains_under_each_reading(tmp_path, reading):
    from dibigan_tf.keras_compat import keras
    from dibigan_tf.training.common import make_strategy
    from dibigan_tf.training.flow import make_flow
    from dibigan_tf.training.gan import GanConfig, GanTrainer

    keras.utils.set_random_seed(0)
    rng, images, feats, labels = tiny_gan_data()
    strategy = make_strategy("default")
    flow, prior = make_flow(strategy, (16, 16, 1), 4, num_steps=2, hidden_channels=4,
                            num_res_blocks=1)
    prior.log_scales.assign(rng.normal(0, 0.2, prior.log_scales.shape))
    cfg = GanConfig(**TINY_GAN, use_distill=False, biject_reading=reading)
    trainer = GanTrainer(str(tmp_path), strategy, cfg, images, feats, labels, flow=flow,
                         prior=prior)
    assert (trainer.prior_table is not None) == (reading == "latent")
    assert trainer.margin > 0
    stable = stable_phase(trainer)
    batch = tiny_gan_batch(trainer, images, feats, labels)
    targets = trainer.real_targets(stable.resolution, batch_size=16)
    batch.update({k: tf.constant(v[:16]) for k, v in targets.items()})
    before = [w.numpy().copy() for w in trainer.generator.trainable_weights]
    out = trainer.make_step(stable)(batch, *trainer.step_args(stable.start_image))
    assert np.isfinite(float(out["biject"])) and float(out["biject"]) > 0
    after = trainer.generator.trainable_weights
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(before, after))
