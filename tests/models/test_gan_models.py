"""Fast tests of the DiBiGAN generators, discriminator and their layers (tiny channel counts)."""
import math

import numpy as np
import pytest
import tensorflow as tf

from dibigan_tf.keras_compat import keras
from dibigan_tf.models import layers as L
from dibigan_tf.models.discriminator import ProgressiveDiscriminator
from dibigan_tf.models.generator import (
    FeatureConditionalGenerator,
    ProgressiveGenerator,
    build_generator,
)

FEATURE_DIM = 12
LATENT_DIM = 6
BATCH = 5  # not divisible by the minibatch-stddev group size 4 on purpose

CONFIGS = {
    "start4_c3": dict(start_resolution=4, num_blocks=3, channels=(3, 3, 3)),
    "start8_c1": dict(start_resolution=8, num_blocks=3, channels=(1, 1, 1)),
}


def _gen(kind, cfg, latent_dim=LATENT_DIM, image_channels=3, seed=0):
    keras.utils.set_random_seed(seed)
    kwargs = dict(CONFIGS[cfg], feature_dim=FEATURE_DIM, latent_dim=latent_dim,
                  image_channels=image_channels, mapping_layers=8, mapping_dim=8)
    return build_generator(kind, **kwargs)


def _disc(cfg, image_channels=3, seed=0):
    keras.utils.set_random_seed(seed)
    return ProgressiveDiscriminator(image_channels=image_channels, **CONFIGS[cfg])


def _inputs(latent_dim=LATENT_DIM, batch=BATCH, seed=1):
    rng = np.random.default_rng(seed)
    v = tf.constant(rng.standard_normal((batch, latent_dim)), tf.float32)
    f = tf.constant(rng.standard_normal((batch, FEATURE_DIM)), tf.float32)
    return v, f


def _images(res, channels=3, batch=BATCH, seed=2):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.uniform(-1, 1, (batch, res, res, channels)), tf.float32)


@pytest.fixture(scope="module")
def fc_gen():
    return _gen("feature_conditional", "start4_c3")


@pytest.fixture(scope="module")
def pg_gen():
    return _gen("pggan", "start4_c3")


@pytest.fixture(scope="module")
def disc():
    return _disc("start4_c3")


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("cfg", sorted(CONFIGS))
@pytest.mark.parametrize("kind", ["feature_conditional", "pggan"])
def test_generator_output_shapes(kind, cfg):
    g = _gen(kind, cfg, image_channels=1 if cfg == "start8_c1" else 3)
    v, f = _inputs()
    assert g.num_stages == 3
    for stage in range(g.num_stages):
        res = CONFIGS[cfg]["start_resolution"] * 2 ** stage
        assert g.resolution(stage) == res
        for alpha in (0.0, 0.5, 1.0):
            out = g(v, f, stage=stage, alpha=tf.constant(alpha))
            assert out.shape == (BATCH, res, res, g.image_channels)
            assert np.all(np.isfinite(out.numpy()))
        # list form of the call
        assert g([v, f], stage=stage, alpha=0.5).shape == (BATCH, res, res, g.image_channels)


@pytest.mark.parametrize("cfg", sorted(CONFIGS))
def test_discriminator_output_shapes(cfg):
    image_channels = 1 if cfg == "start8_c1" else 3
    d = _disc(cfg, image_channels=image_channels)
    for stage in range(d.num_stages):
        res = d.resolution(stage)
        assert res == CONFIGS[cfg]["start_resolution"] * 2 ** stage
        for batch in (BATCH, 4, 1):
            x = _images(res, image_channels, batch=batch)
            out = d(x, stage, tf.constant(0.5))
            assert out.shape == (batch,)
            assert np.all(np.isfinite(out.numpy()))


def test_pggan_without_noise():
    g = _gen("pggan", "start4_c3", latent_dim=0)
    _, f = _inputs()
    a = g(None, f, stage=2, alpha=0.3)
    b = g(tf.zeros([BATCH, 0]), f, stage=2, alpha=0.3)
    assert a.shape == (BATCH, 16, 16, 3)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    # no variables of the first dense beyond the feature dimension
    assert g.blocks[0].dense.kernel.shape[0] == FEATURE_DIM


def test_factory_and_config():
    g = build_generator("pggan", feature_dim=4, latent_dim=2, num_blocks=2, channels=(2, 2),
                        mapping_layers=8, mapping_dim=4)  # mapping args ignored for pggan
    assert isinstance(g, ProgressiveGenerator)
    g2 = build_generator(feature_dim=4, latent_dim=2, num_blocks=2, channels=(2, 2))
    assert isinstance(g2, FeatureConditionalGenerator)
    assert FeatureConditionalGenerator.from_config(g2.get_config()).count_params() == \
        g2.count_params()
    with pytest.raises(ValueError):
        build_generator("nope", feature_dim=4)
    with pytest.raises(TypeError):
        g2(tf.zeros([1, 2]), tf.zeros([1, 4]), stage=tf.constant(1))
    with pytest.raises(ValueError):
        g2(tf.zeros([1, 2]), tf.zeros([1, 4]), stage=2)
    for cls in (L.EqualizedDense, L.EqualizedConv2D):
        layer = cls(7, lr_mul=0.5, bias_init=0.1, activation="lrelu", name="x")
        assert cls.from_config(layer.get_config()).get_config() == layer.get_config()
    for layer in (L.PixelNorm(), L.AdaIN(scale_init=2.0), L.MinibatchStdDev(3),
                  L.Upsample2x(), L.Downsample2x()):
        assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()


# --------------------------------------------------------------------------- fade-in
@pytest.mark.parametrize("kind", ["feature_conditional", "pggan"])
def test_generator_fade_in_endpoints(kind, fc_gen, pg_gen):
    g = fc_gen if kind == "feature_conditional" else pg_gen
    v, f = _inputs()
    up = L.Upsample2x()
    for stage in range(1, g.num_stages):
        prev = g(v, f, stage=stage - 1, alpha=1.0)
        at0 = g(v, f, stage=stage, alpha=tf.constant(0.0))
        np.testing.assert_allclose(at0.numpy(), up(prev).numpy(), atol=1e-6, rtol=0)
        h = g.hidden_states(v, f, stage)[stage]
        new = g.to_rgb[stage](h)
        at1 = g(v, f, stage=stage, alpha=tf.constant(1.0))
        np.testing.assert_allclose(at1.numpy(), new.numpy(), atol=1e-6, rtol=0)
        mid = g(v, f, stage=stage, alpha=0.25)
        np.testing.assert_allclose(mid.numpy(), 0.75 * at0.numpy() + 0.25 * at1.numpy(),
                                   atol=1e-5)
    # alpha is ignored at stage 0
    np.testing.assert_array_equal(g(v, f, stage=0, alpha=0.0).numpy(),
                                  g(v, f, stage=0, alpha=1.0).numpy())


def test_discriminator_fade_in_endpoints(disc):
    d = disc
    for stage in range(1, d.num_stages):
        x = _images(d.resolution(stage))
        at0 = d(x, stage, tf.constant(0.0))
        pooled = tf.nn.avg_pool2d(x, 2, 2, "VALID")
        np.testing.assert_allclose(at0.numpy(), d(pooled, stage - 1, 1.0).numpy(),
                                   atol=1e-6, rtol=0)
        at1 = d(x, stage, tf.constant(1.0))
        manual = d.run_from(d.from_rgb[stage](x), stage)
        np.testing.assert_allclose(at1.numpy(), manual.numpy(), atol=1e-6, rtol=0)
    x = _images(d.resolution(0))
    np.testing.assert_array_equal(d(x, 0, 0.0).numpy(), d(x, 0, 1.0).numpy())


# --------------------------------------------------------------------------- gradients
def _grad_refs(model, loss_fn):
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        loss = loss_fn()
    grads = tape.gradient(loss, variables)
    nonzero, zero, none = set(), set(), set()
    for var, grad in zip(variables, grads):
        if grad is None:
            none.add(var.ref())
        elif np.any(np.abs(tf.convert_to_tensor(grad).numpy()) > 0):
            nonzero.add(var.ref())
        else:
            zero.add(var.ref())
    return nonzero, zero, none


def _refs(variables):
    return {v.ref() for v in variables}


@pytest.mark.parametrize("kind", ["feature_conditional", "pggan"])
def test_generator_gradients_per_stage(kind, fc_gen, pg_gen):
    g = fc_gen if kind == "feature_conditional" else pg_gen
    v, f = _inputs()
    all_vars = _refs(g.trainable_variables)
    assert len(all_vars) == len(g.trainable_variables)
    mapping = _refs(g.mapping.trainable_variables) if kind == "feature_conditional" else set()
    for stage in range(g.num_stages):
        for alpha in (0.5, 1.0):
            weights = tf.random.stateless_normal([BATCH, g.resolution(stage), g.resolution(stage),
                                                  3], seed=[stage, 7])
            nonzero, zero, none = _grad_refs(
                g, lambda: tf.reduce_sum(g(v, f, stage=stage, alpha=alpha) * weights))
            expected = set(mapping)
            for i in range(stage + 1):
                expected |= _refs(g.blocks[i].trainable_variables)
            expected |= _refs(g.to_rgb[stage].trainable_variables)
            prev_rgb = _refs(g.to_rgb[stage - 1].trainable_variables) if stage > 0 else set()
            if 0 < alpha < 1:
                expected |= prev_rgb
                assert zero == set()
            else:
                assert zero == prev_rgb  # computed but multiplied by 1 - alpha = 0
            assert nonzero == expected
            assert none == all_vars - expected - zero
            assert _refs(g.variables_for_stage(stage)) == expected | prev_rgb
    # AdaIN affines of the used blocks are in the expected sets (feature-conditional G)
    if kind == "feature_conditional":
        affines = _refs(g.blocks[0].norm0.style_scale.trainable_variables)
        assert affines <= _refs(g.variables_for_stage(0))


def test_discriminator_gradients_per_stage(disc):
    d = disc
    all_vars = _refs(d.trainable_variables)
    for stage in range(d.num_stages):
        x = _images(d.resolution(stage))
        for alpha in (0.5, 1.0):
            nonzero, zero, none = _grad_refs(
                d, lambda: tf.reduce_sum(d(x, stage, alpha) * tf.range(1.0, BATCH + 1.0)))
            expected = set()
            for i in range(stage + 1):
                expected |= _refs(d.blocks[i].trainable_variables)
            expected |= _refs(d.from_rgb[stage].trainable_variables)
            prev_rgb = _refs(d.from_rgb[stage - 1].trainable_variables) if stage > 0 else set()
            if 0 < alpha < 1:
                expected |= prev_rgb
                assert zero == set()
            else:
                assert zero == prev_rgb
            assert nonzero == expected
            assert none == all_vars - expected - zero
            assert _refs(d.variables_for_stage(stage)) == expected | prev_rgb


def test_all_variables_exist_at_construction():
    g = _gen("feature_conditional", "start4_c3")
    n_vars = len(g.trainable_variables)
    # mapping (8 dense x 2), block0 (dense, conv, 2 AdaIN x 2 dense) + 2 x (2 conv, 2 AdaIN), to-RGB
    assert n_vars == 16 + (2 + 2 + 8) + 2 * (4 + 8) + 3 * 2
    v, f = _inputs()
    for stage in range(g.num_stages):
        g(v, f, stage=stage, alpha=0.5)
    assert len(g.trainable_variables) == n_vars
    d = _disc("start4_c3")
    n_d = len(d.trainable_variables)
    assert n_d == 3 * 2 + 3 * 2 + 2 * 2 * 2
    d(_images(16), 2, 0.5)
    assert len(d.trainable_variables) == n_d


# --------------------------------------------------------------------------- layers
@pytest.mark.parametrize("lr_mul", [1.0, 0.01])
def test_equalized_lr_statistics(lr_mul):
    keras.utils.set_random_seed(3)
    dense = L.EqualizedDense(256, lr_mul=lr_mul)
    dense.build((None, 512))
    conv = L.EqualizedConv2D(64, 3, gain=1.0, lr_mul=lr_mul)
    conv.build((None, 8, 8, 64))
    for layer, fan_in, gain in ((dense, 512, math.sqrt(2)), (conv, 9 * 64, 1.0)):
        he_std = gain / math.sqrt(fan_in)
        assert layer.he_std == pytest.approx(he_std)
        assert layer.runtime_coef == pytest.approx(he_std * lr_mul)
        raw_std = float(np.std(layer.kernel.numpy()))
        assert raw_std == pytest.approx(1.0 / lr_mul, rel=0.03)
        eff_std = float(np.std(layer.effective_kernel().numpy()))
        assert eff_std == pytest.approx(he_std, rel=0.03)
        # the effective kernel is what the layer applies
        x = tf.random.normal([2, 512] if layer is dense else [2, 8, 8, 64])
        if layer is dense:
            ref = tf.matmul(x, layer.effective_kernel()) + layer.effective_bias()
        else:
            ref = tf.nn.conv2d(x, layer.effective_kernel(), 1, "SAME") + layer.effective_bias()
        np.testing.assert_allclose(layer(x).numpy(), ref.numpy(), atol=1e-4)
    # effective bias starts at bias_init whatever lr_mul
    b = L.EqualizedDense(4, lr_mul=lr_mul, bias_init=0.7)
    b.build((None, 3))
    np.testing.assert_allclose(b.effective_bias().numpy(), 0.7, rtol=1e-6)
    np.testing.assert_allclose(b(tf.zeros([1, 3])).numpy(), 0.7, rtol=1e-6)


@pytest.mark.parametrize("scale_init,bias_init", [(1.0, 0.0), (2.0, 0.5)])
def test_adain_zero_style(scale_init, bias_init):
    keras.utils.set_random_seed(4)
    adain = L.AdaIN(scale_init=scale_init, bias_init=bias_init)
    x = tf.random.normal([3, 8, 8, 5], mean=3.0, stddev=4.0)
    w = tf.zeros([3, 16])
    y = adain([x, w]).numpy()
    np.testing.assert_allclose(y.mean(axis=(1, 2)), bias_init, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(1, 2)), scale_init ** 2, rtol=1e-4)
    # a non-zero style changes the per-channel statistics
    y2 = adain([x, tf.random.normal([3, 16])]).numpy()
    assert not np.allclose(y2.mean(axis=(1, 2)), bias_init, atol=1e-3)


def test_pixel_norm_unit_mean_square():
    x = tf.random.normal([2, 4, 4, 7], stddev=5.0)
    y = L.PixelNorm()(x).numpy()
    np.testing.assert_allclose(np.mean(y ** 2, axis=-1), 1.0, rtol=1e-5)
    z = L.PixelNorm()(tf.random.normal([6, 33]) * 0.1).numpy()  # eps=1e-8 negligible
    np.testing.assert_allclose(np.mean(z ** 2, axis=-1), 1.0, rtol=1e-4)


def _mbstd_reference(x, group_size):
    n = x.shape[0]
    g = min(group_size, n)
    if n % g:
        divisors = [d for d in range(group_size, 1, -1) if d <= n and n % d == 0]
        g = divisors[0] if divisors else n
    m = n // g
    out = np.zeros(n)
    for j in range(m):
        members = [j * g + i for i in range(g)]  # consecutive groups: sample n in group n // G
        std = np.sqrt(x[members].var(axis=0) + 1e-8).mean()
        out[members] = std
    return out, g


@pytest.mark.parametrize("batch,expected_group", [(4, 4), (8, 4), (2, 2), (6, 3), (5, 5),
                                                  (7, 7), (1, 1)])
def test_minibatch_stddev(batch, expected_group):
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 2, 3, 2)).astype(np.float32)
    layer = L.MinibatchStdDev(group_size=4)
    y = layer(tf.constant(x)).numpy()
    assert y.shape == (batch, 2, 3, 3)
    np.testing.assert_array_equal(y[..., :2], x)
    ref, g = _mbstd_reference(x.astype(np.float64), 4)
    assert g == expected_group
    for i in range(batch):
        np.testing.assert_allclose(y[i, ..., 2], ref[i], rtol=1e-5, atol=1e-6)


def test_minibatch_stddev_hand_computed_and_dynamic_batch():
    # batch 2, 1x1x1 features 1 and 3: std = 1 (population), appended to both samples
    x = tf.constant([[[[1.0]]], [[[3.0]]]])
    y = L.MinibatchStdDev(group_size=4)(x).numpy()
    np.testing.assert_allclose(y[:, 0, 0, 1], [1.0, 1.0], rtol=1e-6)
    # unknown batch size inside a tf.function
    layer = L.MinibatchStdDev(group_size=4)
    fn = tf.function(layer, input_signature=[tf.TensorSpec([None, 2, 2, 3], tf.float32)])
    for batch in (3, 6, 8):
        x = np.random.default_rng(batch).standard_normal((batch, 2, 2, 3)).astype(np.float32)
        ref, _ = _mbstd_reference(x.astype(np.float64), 4)
        out = fn(tf.constant(x)).numpy()
        np.testing.assert_allclose(out[:, 0, 0, 3], ref, rtol=1e-5)


def test_up_down_sample_and_lerp():
    x = tf.reshape(tf.range(16.0), [1, 4, 4, 1])
    up = L.Upsample2x()(x).numpy()
    assert up.shape == (1, 8, 8, 1)
    np.testing.assert_array_equal(up[0, ::2, ::2, 0], x.numpy()[0, :, :, 0])
    np.testing.assert_array_equal(up[0, 1::2, 1::2, 0], x.numpy()[0, :, :, 0])
    np.testing.assert_array_equal(L.Downsample2x()(L.Upsample2x()(x)).numpy(), x.numpy())
    down = L.Downsample2x()(x).numpy()
    assert down[0, 0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)
    a, b = tf.constant([1.0, -2.0]), tf.constant([3.0, 5.0])
    np.testing.assert_array_equal(L.lerp(a, b, 0.0).numpy(), a.numpy())
    np.testing.assert_array_equal(L.lerp(a, b, 1.0).numpy(), b.numpy())
    np.testing.assert_allclose(L.lerp(a, b, tf.constant(0.25)).numpy(), [1.5, -0.25])


# --------------------------------------------------------------------------- conditioning
def test_feature_conditional_depends_on_v_and_f(fc_gen):
    g = fc_gen
    v, f = _inputs()
    v2, f2 = _inputs(seed=9)
    for stage in range(g.num_stages):
        base = g(v, f, stage=stage, alpha=0.5).numpy()
        other_v = g(v2, f, stage=stage, alpha=0.5).numpy()
        other_f = g(v, f2, stage=stage, alpha=0.5).numpy()
        assert np.max(np.abs(base - other_v)) > 1e-3
        assert np.max(np.abs(base - other_f)) > 1e-3
        # per sample: changing only sample 0's feature changes only sample 0's image
        f_mod = tf.tensor_scatter_nd_update(f, [[0]], f2[:1])
        out = g(v, f_mod, stage=stage, alpha=0.5).numpy()
        assert np.max(np.abs(out[0] - base[0])) > 1e-3
        np.testing.assert_allclose(out[1:], base[1:], atol=1e-6)


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("kind", ["feature_conditional", "pggan"])
def test_checkpoint_round_trip(kind, tmp_path):
    g1 = _gen(kind, "start8_c1", image_channels=1, seed=11)
    d1 = _disc("start8_c1", image_channels=1, seed=12)
    v, f = _inputs()
    x = _images(32, 1)
    path = tf.train.Checkpoint(generator=g1, discriminator=d1).save(str(tmp_path / "ckpt"))
    g2 = _gen(kind, "start8_c1", image_channels=1, seed=21)
    d2 = _disc("start8_c1", image_channels=1, seed=22)
    assert not np.allclose(g1(v, f, stage=2, alpha=0.5).numpy(), g2(v, f, stage=2, alpha=0.5).numpy())
    status = tf.train.Checkpoint(generator=g2, discriminator=d2).restore(path)
    status.assert_consumed()
    for stage in range(g1.num_stages):
        np.testing.assert_array_equal(g1(v, f, stage=stage, alpha=0.3).numpy(),
                                      g2(v, f, stage=stage, alpha=0.3).numpy())
    np.testing.assert_array_equal(d1(x, 2, 0.3).numpy(), d2(x, 2, 0.3).numpy())


# --------------------------------------------------------------------------- tracing
def test_tf_function_traces_once_per_stage(fc_gen, disc):
    g, d = fc_gen, disc
    v, f = _inputs()
    traces = {"g": 0, "d": 0}

    @tf.function
    def gen_step(v, f, alpha):
        traces["g"] += 1
        return g(v, f, stage=1, alpha=alpha)

    @tf.function
    def disc_step(x, alpha):
        traces["d"] += 1
        return d(x, 1, alpha)

    x = _images(8)
    for alpha in (0.0, 0.1, 0.7, 1.0):
        a = tf.constant(alpha)
        out = gen_step(v, f, a)
        np.testing.assert_allclose(out.numpy(), g(v, f, stage=1, alpha=a).numpy(), atol=1e-5)
        disc_step(x, a)
    assert traces == {"g": 1, "d": 1}
