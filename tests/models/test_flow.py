"""Tests for dibigan_tf.models.flow (the bijection H and its class-conditional Gaussian prior)."""
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from dibigan_tf.keras_compat import keras
from dibigan_tf.models import flow as F

tfd = tfp.distributions


def perturb(module, scale=0.05, seed=0):
    """Adds seeded Gaussian noise to every trainable variable (so zero-init couplings are not a
    fixed scaling and ActNorm / LU factors are not at their init values)."""
    rng = np.random.RandomState(seed)
    for v in module.trainable_variables:
        v.assign(v + tf.constant(scale * rng.randn(*v.shape), dtype=v.dtype))


def random_images(shape, seed=0, dtype=tf.float32):
    pixels = np.random.RandomState(seed).randint(0, 256, size=shape)
    return F.dequantize(tf.constant(pixels, tf.float32), seed=seed, dtype=dtype)


def autodiff_log_det(fn, x):
    """log|det d fn(x) / dx| per example via batch_jacobian (fn preserves #dims)."""
    b = x.shape[0]
    with tf.GradientTape() as tape:
        tape.watch(x)
        # `x + 0` is a new tensor, so TFP's forward cache cannot return a disconnected result.
        y = tf.reshape(fn(x + 0), [b, -1])
    jac = tape.batch_jacobian(y, x)
    jac = tf.reshape(jac, [b, y.shape[1], -1])
    return tf.linalg.slogdet(jac)[1]


# ---------------------------------------------------------------------------------------------
# The whole flow
# ---------------------------------------------------------------------------------------------

def test_latent_shapes_and_structure():
    f = F.build_flow((32, 32, 1))
    assert f.latent_shape == (8, 8, 16)
    assert f.steps_per_level == (3, 2)
    assert len(f.actnorms) == 5
    assert f.count_params() > 0
    assert f.bijector.forward_event_shape([32, 32, 1]) == tf.TensorShape([8, 8, 16])
    assert f.bijector.inverse_event_shape([8, 8, 16]) == tf.TensorShape([32, 32, 1])
    # The first coupling sees >= 4 channels.
    first_coupling = f.bijector.bijectors[1].bijectors[0].bijectors[2]
    assert isinstance(first_coupling, F.AffineCoupling) and first_coupling.num_channels == 4
    g = F.build_flow((64, 64, 3), num_steps=2, hidden_channels=8, num_res_blocks=1)
    assert g.latent_shape == (16, 16, 48)
    with pytest.raises(ValueError):
        F.build_flow((32, 32, 1), mixing="nope")


@pytest.mark.parametrize("shape,mixing", [((32, 32, 1), "conv1x1"), ((16, 16, 3), "conv1x1"),
                                          ((16, 16, 3), "permute")])
def test_round_trip(shape, mixing):
    f = F.build_flow(shape, mixing=mixing)
    x = random_images((4,) + shape, seed=1)
    f.initialize(x)
    perturb(f, 0.05, seed=2)
    z, log_det = f.forward(x)
    assert z.shape == (4,) + f.latent_shape and log_det.shape == (4,)
    x_rec = f.inverse(tf.constant(z.numpy()))
    assert np.max(np.abs(x_rec.numpy() - x.numpy())) < 1e-4
    # The flow is really non-trivial: not a pixel permutation and no constant log-det.
    assert np.std(log_det.numpy()) > 1e-3
    # Inverse log-det is minus the forward log-det.
    _, inv_log_det = f.inverse_and_log_det(z)
    np.testing.assert_allclose(inv_log_det.numpy(), -log_det.numpy(), rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("shape,kw", [((8, 8, 1), {}),
                                      ((4, 4, 3), {"num_squeezes": 1, "mixing": "permute",
                                                   "num_steps": 2})])
def test_log_det_matches_autodiff(shape, kw):
    f = F.build_flow(shape, hidden_channels=8, dtype=tf.float64, **kw)
    x = random_images((3,) + shape, seed=3, dtype=tf.float64)
    f.initialize(x)
    perturb(f, 0.1, seed=4)
    _, log_det = f.forward(x)
    expected = autodiff_log_det(lambda t: f.forward(t)[0], x)
    np.testing.assert_allclose(log_det.numpy(), expected.numpy(), rtol=0, atol=1e-6)
    # Inverse log-det too.
    z = f.forward(x)[0]
    _, inv_log_det = f.inverse_and_log_det(z)
    np.testing.assert_allclose(inv_log_det.numpy(), -expected.numpy(), rtol=0, atol=1e-6)


def test_actnorm_initialize_is_data_dependent_and_idempotent():
    f = F.build_flow((8, 8, 1), hidden_channels=8)
    x = random_images((16, 8, 8, 1), seed=5)
    assert not bool(f.initialized)
    f.initialize(x)
    assert bool(f.initialized)
    # The first ActNorm whitens its input per channel.
    squeezed = tf.nn.space_to_depth(x, 2)
    y, _ = f.actnorms[0].flow_forward(squeezed)
    mean, var = tf.nn.moments(y, [0, 1, 2])
    np.testing.assert_allclose(mean.numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(var.numpy(), 1.0, atol=1e-3)
    before = [v.numpy() for v in f.trainable_variables]
    f.initialize(x * 3.0 + 0.1)  # no-op once initialised
    for b, v in zip(before, f.trainable_variables):
        np.testing.assert_array_equal(b, v.numpy())


# ---------------------------------------------------------------------------------------------
# Each custom bijector alone (TFP public API, event_ndims=3)
# ---------------------------------------------------------------------------------------------

def _make_bijectors():
    dt = tf.float64
    actnorm = F.ActNorm(4, dtype=dt)
    conv = F.Invertible1x1Conv(4, dtype=dt, seed=3)
    coupling = F.AffineCoupling(4, hidden_channels=8, num_res_blocks=2, dtype=dt, seed=1)
    inner = F.AffineCoupling(2, hidden_channels=8, num_res_blocks=1, dtype=dt, seed=2)
    active = F.ActiveChannels(inner, 2, dtype=dt)
    seq = F.SequentialFlow([F.ActNorm(4, dtype=dt), F.Invertible1x1Conv(4, dtype=dt, seed=5)],
                           dtype=dt)
    for i, b in enumerate([actnorm, conv, coupling, active, seq]):
        perturb(b, 0.2, seed=10 + i)
    return {"squeeze": F.Squeeze(dtype=dt), "actnorm": actnorm, "conv1x1": conv,
            "coupling": coupling, "active_channels": active, "sequential": seq}


@pytest.fixture(scope="module")
def bijectors():
    return _make_bijectors()


@pytest.mark.parametrize("name", ["squeeze", "actnorm", "conv1x1", "coupling",
                                  "active_channels", "sequential"])
def test_single_bijector(bijectors, name):
    bij = bijectors[name]
    assert isinstance(bij, tfp.bijectors.Bijector)
    x = tf.constant(np.random.RandomState(7).uniform(-0.5, 0.5, (3, 4, 4, 4)))
    y = bij.forward(x)
    # Break TFP's forward/inverse cache (keyed on the tensor object) before inverting.
    x_rec = bij.inverse(tf.constant(y.numpy()))
    np.testing.assert_allclose(x_rec.numpy(), x.numpy(), atol=1e-10)
    fldj = bij.forward_log_det_jacobian(x, event_ndims=3)
    fldj = fldj + tf.zeros([3], tf.float64)  # constant-Jacobian bijectors may return a scalar
    expected = autodiff_log_det(bij.forward, x)
    np.testing.assert_allclose(fldj.numpy(), expected.numpy(), atol=1e-6)
    ildj = bij.inverse_log_det_jacobian(tf.constant(y.numpy()), event_ndims=3)
    np.testing.assert_allclose((ildj + tf.zeros([3], tf.float64)).numpy(), -expected.numpy(),
                               atol=1e-6)
    if name != "squeeze":  # a real (non-volume-preserving) transform after perturbation
        assert np.max(np.abs(expected.numpy())) > 1e-3


def test_squeeze_layout_and_shapes():
    sq = F.Squeeze()
    x = tf.reshape(tf.range(2 * 4 * 4 * 3, dtype=tf.float32), [2, 4, 4, 3])
    y = sq.forward(x)
    assert y.shape == (2, 2, 2, 12)
    np.testing.assert_array_equal(y[0, 0, 0, :3].numpy(), x[0, 0, 0].numpy())
    np.testing.assert_array_equal(y[0, 0, 0, 3:6].numpy(), x[0, 0, 1].numpy())
    np.testing.assert_array_equal(y[0, 0, 0, 6:9].numpy(), x[0, 1, 0].numpy())
    assert sq.forward_event_shape([4, 4, 3]) == tf.TensorShape([2, 2, 12])
    assert sq.inverse_event_shape([2, 2, 12]) == tf.TensorShape([4, 4, 3])
    np.testing.assert_array_equal(sq.forward_event_shape_tensor([4, 4, 3]).numpy(), [2, 2, 12])


def test_invertible_1x1_conv_weight_is_lu_and_invertible():
    conv = F.Invertible1x1Conv(6, dtype=tf.float64, seed=0)
    w = conv.weight().numpy()
    np.testing.assert_allclose(w @ w.T, np.eye(6), atol=1e-10)  # initialised as a rotation
    perturb(conv, 0.3, seed=1)
    w = conv.weight().numpy()
    np.testing.assert_allclose(w @ conv.inverse_weight().numpy(), np.eye(6), atol=1e-10)
    np.testing.assert_allclose(np.linalg.slogdet(w)[1], np.sum(conv.log_s.numpy()), atol=1e-10)


def test_coupling_network_is_paper_config_and_zero_initialised():
    c = F.AffineCoupling(4, dtype=tf.float32)
    convs = [l for l in c.network.layers if isinstance(l, keras.layers.Conv2D)]
    # conv_in + 2 residual blocks x 2 convs + conv_out, 32 feature maps.
    assert len(convs) == 6 and all(l.filters == 32 for l in convs[:-1])
    assert convs[-1].filters == 4
    assert not np.any(convs[-1].kernel.numpy()) and not np.any(convs[-1].bias.numpy())
    x = tf.random.stateless_normal([2, 4, 4, 4], seed=[1, 2])
    y, ldj = c.flow_forward(x)
    np.testing.assert_allclose(y[..., :2].numpy(), x[..., :2].numpy())
    s = 1.0 / (1.0 + math.exp(-2.0))
    np.testing.assert_allclose(y[..., 2:].numpy(), x[..., 2:].numpy() * s, rtol=1e-6)
    np.testing.assert_allclose(ldj.numpy(), 2 * 16 * math.log(s), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Prior
# ---------------------------------------------------------------------------------------------

def test_prior_diag_log_prob_matches_tfp():
    prior = F.ClassConditionalGaussianPrior(3, (2, 2, 3), dtype=tf.float64, seed=1)
    perturb(prior, 0.3, seed=2)
    z = tf.constant(np.random.RandomState(3).randn(5, 2, 2, 3))
    labels = tf.constant([0, 2, 1, 2, 0])
    ref = tfd.MultivariateNormalDiag(
        loc=tf.gather(prior.means, labels), scale_diag=tf.exp(tf.gather(prior.log_scales, labels)))
    expected = ref.log_prob(tf.reshape(z, [5, -1]))
    np.testing.assert_allclose(prior.log_prob(z, labels).numpy(), expected.numpy(), rtol=1e-10)
    # All-class log-probs (matmul-expanded form) agree with the per-label ones.
    all_lp = prior.class_log_probs(z).numpy()
    np.testing.assert_allclose(all_lp[np.arange(5), labels.numpy()], expected.numpy(), rtol=1e-9)
    mean, scale = prior.mean_and_scale(labels)
    assert mean.shape == (5, 2, 2, 3) and scale.shape == (5, 2, 2, 3)


def test_prior_full_log_prob_matches_tfp():
    prior = F.ClassConditionalGaussianPrior(4, (2, 2, 2), covariance="full", dtype=tf.float64)
    perturb(prior, 0.3, seed=5)
    z = tf.constant(np.random.RandomState(6).randn(6, 2, 2, 2))
    labels = tf.constant([3, 1, 1, 0, 3, 3])
    tril = prior.scale_tril(labels)
    assert np.all(np.triu(tril.numpy()[0], 1) == 0)
    ref = tfd.MultivariateNormalTriL(loc=tf.gather(prior.means, labels), scale_tril=tril)
    expected = ref.log_prob(tf.reshape(z, [6, -1])).numpy()
    np.testing.assert_allclose(prior.log_prob(z, labels).numpy(), expected, rtol=1e-10)
    all_lp = prior.class_log_probs(z).numpy()
    np.testing.assert_allclose(all_lp[np.arange(6), labels.numpy()], expected, rtol=1e-10)
    with pytest.raises(ValueError):
        F.ClassConditionalGaussianPrior(2, (8, 8, 65), covariance="full")


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_prior_mixture_log_prob(covariance):
    k = 3
    prior = F.ClassConditionalGaussianPrior(k, (1, 1, 4), covariance=covariance,
                                            dtype=tf.float64)
    perturb(prior, 0.2, seed=8)
    z = tf.constant(np.random.RandomState(9).randn(4, 1, 1, 4))
    per_class = np.stack([prior.log_prob(z, tf.fill([4], c)).numpy() for c in range(k)], 1)
    m = per_class.max(1, keepdims=True)
    hand = (m + np.log(np.exp(per_class - m).sum(1, keepdims=True)))[:, 0] - np.log(k)
    np.testing.assert_allclose(prior.mixture_log_prob(z).numpy(), hand, rtol=1e-10)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_prior_sampling(covariance):
    prior = F.ClassConditionalGaussianPrior(5, (2, 2, 1), covariance=covariance, seed=3)
    perturb(prior, 0.2, seed=1)
    labels = tf.constant([4, 0, 2])
    mean, _ = prior.mean_and_scale(labels)
    s0 = prior.sample(labels, temperature=0.0, seed=1)
    np.testing.assert_allclose(s0.numpy(), mean.numpy(), atol=1e-6)
    s_small = prior.sample(labels, temperature=1e-4, seed=1)
    np.testing.assert_allclose(s_small.numpy(), mean.numpy(), atol=1e-2)
    s1 = prior.sample(labels, seed=[3, 4])
    assert s1.shape == (3, 2, 2, 1)
    np.testing.assert_array_equal(s1.numpy(), prior.sample(labels, seed=[3, 4]).numpy())
    assert np.max(np.abs(s1.numpy() - mean.numpy())) > 1e-2
    # Monte-Carlo: sample mean -> class mean.
    many = prior.sample(tf.fill([4000], 2), seed=7)
    np.testing.assert_allclose(tf.reduce_mean(many, 0).numpy(), mean[2].numpy(), atol=0.1)


def test_prior_means_spread_apart():
    prior = F.ClassConditionalGaussianPrior(10, (8, 8, 16))
    mu = prior.means.numpy()
    dists = np.linalg.norm(mu[:, None] - mu[None], axis=-1)[np.triu_indices(10, 1)]
    assert dists.min() > 30.0  # ~ sqrt(2 * 1024)


# ---------------------------------------------------------------------------------------------
# Data, loss and metric helpers
# ---------------------------------------------------------------------------------------------

def test_dequantize_convention():
    pixels = tf.constant([[0, 1, 128, 255]], tf.uint8)
    x = F.dequantize(pixels, seed=3)
    assert x.dtype == tf.float32
    lo = pixels.numpy() / 256.0 - 0.5
    assert np.all(x.numpy() >= lo) and np.all(x.numpy() < lo + 1 / 256.0)
    np.testing.assert_array_equal(F.dequantize(tf.cast(pixels, tf.float32), seed=3).numpy(),
                                  x.numpy())
    np.testing.assert_array_equal(
        F.dequantize(tf.cast(pixels, tf.float32) / 255.0, seed=3, unit_range=True).numpy(),
        x.numpy())
    np.testing.assert_array_equal(F.to_pixels(x).numpy(), pixels.numpy())
    x64 = F.dequantize(pixels, rng=tf.random.Generator.from_seed(1), dtype=tf.float64)
    assert x64.dtype == tf.float64


def test_bits_per_dim_and_nll():
    # The uniform density on [-0.5, 0.5]^D has NLL 0 nats, i.e. exactly 8 bits per dimension.
    np.testing.assert_allclose(F.bits_per_dim(tf.constant(0.0), 100).numpy(), 8.0, rtol=1e-6)
    np.testing.assert_allclose(F.bits_per_dim(100 * math.log(2.0), 100), 9.0, rtol=1e-6)
    f = F.build_flow((8, 8, 1), hidden_channels=8, num_steps=2)
    prior = F.ClassConditionalGaussianPrior(3, f.latent_shape)
    x = random_images((4, 8, 8, 1), seed=1)
    labels = tf.constant([0, 1, 2, 0])
    z, log_det = f.forward(x)
    nll = F.nll_loss(f, prior, x, labels)
    np.testing.assert_allclose(nll.numpy(), -(prior.log_prob(z, labels) + log_det).numpy(),
                               rtol=1e-6)
    nll_mix = F.nll_loss(f, prior, x)
    np.testing.assert_allclose(nll_mix.numpy(), -(prior.mixture_log_prob(z) + log_det).numpy(),
                               rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Training, tf.function / tf.distribute, checkpoints
# ---------------------------------------------------------------------------------------------

def test_training_reduces_nll():
    tf.keras.utils.set_random_seed(0)
    f = F.build_flow((8, 8, 1), hidden_channels=16, num_steps=3)
    prior = F.ClassConditionalGaussianPrior(2, f.latent_shape)
    # Structured data: two classes of smooth blobs.
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:8, 0:8]
    imgs, labels = [], []
    for i in range(16):
        c = i % 2
        cy, cx = (2, 2) if c == 0 else (5, 5)
        blob = 255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 4.0)
        imgs.append(np.clip(blob + rng.randint(0, 20, blob.shape), 0, 255).astype(np.uint8))
        labels.append(c)
    pixels = tf.constant(np.stack(imgs)[..., None])
    labels = tf.constant(labels)
    x = F.dequantize(pixels, seed=0)
    f.initialize(x)
    variables = f.trainable_variables + prior.trainable_variables
    opt = keras.optimizers.Adam(1e-3)
    opt.build(variables)  # slots exist before tracing: a single trace

    @tf.function
    def step(x, labels):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(F.nll_loss(f, prior, x, labels))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    @tf.function
    def evaluate(x, labels):
        return tf.reduce_mean(F.nll_loss(f, prior, x, labels))

    before = float(evaluate(x, labels))
    for _ in range(40):
        step(x, labels)
    after = float(evaluate(x, labels))
    assert step.experimental_get_tracing_count() == 1
    bpd_before = float(F.bits_per_dim(before, 64))
    bpd_after = float(F.bits_per_dim(after, 64))
    assert np.isfinite(after)
    assert bpd_after < bpd_before - 0.5, (bpd_before, bpd_after)


def test_checkpoint_round_trip(tmp_path):
    shape = (8, 8, 1)
    f = F.build_flow(shape, hidden_channels=8, seed=0)
    prior = F.ClassConditionalGaussianPrior(3, f.latent_shape, seed=0)
    x = random_images((4,) + shape, seed=2)
    f.initialize(x)
    perturb(f, 0.05, seed=1)
    perturb(prior, 0.05, seed=1)
    z, log_det = f.forward(x)
    path = tf.train.Checkpoint(flow=f, prior=prior).save(str(tmp_path / "ckpt"))

    g = F.build_flow(shape, hidden_channels=8, seed=123)
    prior2 = F.ClassConditionalGaussianPrior(3, g.latent_shape, seed=123)
    assert not np.allclose(g.forward(x)[0].numpy(), z.numpy())
    status = tf.train.Checkpoint(flow=g, prior=prior2).restore(path)
    status.assert_existing_objects_matched()
    assert bool(g.initialized)
    z2, log_det2 = g.forward(x)
    np.testing.assert_array_equal(z2.numpy(), z.numpy())
    np.testing.assert_array_equal(log_det2.numpy(), log_det.numpy())
    np.testing.assert_array_equal(prior2.means.numpy(), prior.means.numpy())
    # Restored initialised flags make initialize() a no-op.
    g.initialize(x * 2.0)
    np.testing.assert_array_equal(g.forward(x)[0].numpy(), z.numpy())


def test_mirrored_strategy_train_step():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        f = F.build_flow((8, 8, 1), hidden_channels=8, num_steps=2)
        prior = F.ClassConditionalGaussianPrior(2, f.latent_shape)
        opt = keras.optimizers.Adam(1e-3)
    x = random_images((8, 8, 8, 1), seed=4)
    labels = tf.constant([0, 1] * 4)
    f.initialize(x)  # cross-replica context
    variables = f.trainable_variables + prior.trainable_variables
    with strategy.scope():
        opt.build(variables)

    @tf.function
    def train_step(x, labels):
        def replica_fn(x, labels):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(F.nll_loss(f, prior, x, labels))
            opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss
        per_replica = strategy.run(replica_fn, args=(x, labels))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    losses = [float(train_step(x, labels)) for _ in range(3)]
    assert all(np.isfinite(losses))
    assert train_step.experimental_get_tracing_count() == 1
