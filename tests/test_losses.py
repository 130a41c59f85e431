"""Eq. 4-9 against hand-computed and float64 reference values."""
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from dibigan_tf import losses


def test_cosine_distill_loss_eq6_by_hand():
    # cos((1,0),(1,1)) = 1/sqrt(2): (1 - 0.70710678)^2 = 0.08578644
    # cos((0,2),(0,-1)) = -1: (1 - (-1))^2 = 4
    t = tf.constant([[1.0, 0.0], [0.0, 2.0]])
    p = tf.constant([[1.0, 1.0], [0.0, -1.0]])
    np.testing.assert_allclose(losses.cosine_distill_loss(t, p).numpy(), [0.08578644, 4.0],
                               rtol=1e-5)


def test_generator_distill_loss_eq7_by_hand():
    # one tap of 2x1x1x2 = 2 elements per example: example 0 differs by (3, 4) -> norm 5, /2 = 2.5
    fake_tap = tf.constant([[[[3.0, 4.0]]], [[[1.0, 1.0]]]])
    real_tap = tf.constant([[[[0.0, 0.0]]], [[[1.0, 1.0]]]])
    # embeddings: example 0 identical (cos 1 -> 0), example 1 orthogonal (cos 0 -> 1)
    fake_emb = tf.constant([[1.0, 0.0], [1.0, 0.0]])
    real_emb = tf.constant([[2.0, 0.0], [0.0, 1.0]])
    out = losses.generator_distill_loss([fake_tap], [real_tap], fake_emb, real_emb,
                                        tap_weights=[2.0], embedding_weight=10.0)
    # example 0: 2 * 2.5 + 10 * 0 = 5; example 1: 2 * 0 + 10 * 1 = 10
    np.testing.assert_allclose(out.numpy(), [5.0, 10.0], rtol=1e-5)


def _random_spd(rng, n):
    a = rng.standard_normal((n, n))
    return a @ a.T + 0.1 * np.eye(n)


def _w2_reference(mu1, s1, mu2, s2):
    r1 = scipy.linalg.sqrtm(s1).real
    cross = scipy.linalg.sqrtm(r1 @ s2 @ r1).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * cross))


@pytest.mark.parametrize("n", [2, 5, 8])
def test_w2_full_matches_schur_reference(n):
    rng = np.random.default_rng(n)
    mu1, mu2 = rng.standard_normal(n), rng.standard_normal(n)
    s1, s2 = _random_spd(rng, n), _random_spd(rng, n)
    got = losses.w2_gaussian_full(tf.constant(mu1), tf.constant(s1), tf.constant(mu2),
                                  tf.constant(s2)).numpy()
    np.testing.assert_allclose(got, _w2_reference(mu1, s1, mu2, s2), rtol=1e-6, atol=1e-8)


def test_w2_diag_matches_reference_and_full_path():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(4), rng.standard_normal(4)
    sd1, sd2 = rng.random(4) + 0.1, rng.random(4) + 0.1
    ref = _w2_reference(mu1, np.diag(sd1 ** 2), mu2, np.diag(sd2 ** 2))
    diag = losses.w2_gaussian_diag(tf.constant(mu1), tf.constant(sd1), tf.constant(mu2),
                                   tf.constant(sd2)).numpy()
    full = losses.w2_gaussian_full(tf.constant(mu1), tf.constant(np.diag(sd1 ** 2)),
                                   tf.constant(mu2), tf.constant(np.diag(sd2 ** 2))).numpy()
    np.testing.assert_allclose(diag, ref, rtol=1e-8)
    np.testing.assert_allclose(full, ref, rtol=1e-6)


def test_w2_full_is_differentiable():
    mu = tf.Variable([0.5, -0.5], dtype=tf.float64)
    cov = tf.constant([[2.0, 0.3], [0.3, 1.0]], tf.float64)
    with tf.GradientTape() as tape:
        d = losses.w2_gaussian_full(mu, cov, tf.zeros(2, tf.float64), tf.eye(2, dtype=tf.float64))
    np.testing.assert_allclose(tape.gradient(d, mu).numpy(), [1.0, -1.0])  # d/dmu |mu|^2 = 2 mu


def test_pairwise_w2_diag_equals_elementwise():
    rng = np.random.default_rng(1)
    mu, sd = rng.standard_normal((5, 3)), rng.random((5, 3))
    mat = losses.pairwise_w2_diag(tf.constant(mu), tf.constant(sd)).numpy()
    for i in range(5):
        for j in range(5):
            ref = np.sum((mu[i] - mu[j]) ** 2) + np.sum((sd[i] - sd[j]) ** 2)
            assert mat[i, j] == pytest.approx(ref, abs=1e-9)


def test_identity_aware_loss_eq5_same_and_different_with_margin():
    # three reconstructions: 0 and 1 same identity, 2 different
    d = tf.constant([[0.0, 0.4, 3.0],
                     [0.4, 0.0, 0.5],
                     [3.0, 0.5, 0.0]])
    labels = tf.constant([7, 7, 9])
    out = losses.identity_aware_loss(d, labels, margin=1.0).numpy()
    # example 0: same(0.4) + max(0, 1 - 3.0)=0 -> 0.4 / 2 = 0.2
    # example 1: same(0.4) + max(0, 1 - 0.5)=0.5 -> 0.9 / 2 = 0.45
    # example 2: max(0, 1-3)=0 + max(0, 1-0.5)=0.5 -> 0.5 / 2 = 0.25
    np.testing.assert_allclose(out, [0.2, 0.45, 0.25], rtol=1e-6)
    # a pair of different identities beyond the margin costs nothing
    far = losses.identity_aware_loss(tf.constant([[0.0, 2.0], [2.0, 0.0]]), tf.constant([0, 1]),
                                     margin=1.5).numpy()
    np.testing.assert_allclose(far, [0.0, 0.0])


def test_latent_gaussian_stats_spatial():
    z = np.zeros((1, 2, 1, 2), np.float32)
    z[0, :, 0, 0] = [1.0, 3.0]   # channel 0: mean 2, std 1
    z[0, :, 0, 1] = [5.0, 5.0]   # channel 1: mean 5, std 0
    mu, sigma = losses.latent_gaussian_stats(tf.constant(z), eps=0.0)
    np.testing.assert_allclose(mu.numpy(), [[2.0, 5.0]])
    np.testing.assert_allclose(sigma.numpy(), [[1.0, 0.0]])


def test_biject_loss_zero_for_identical_same_identity():
    z = tf.random.stateless_normal([2, 4, 4, 3], seed=[1, 2])
    z = tf.concat([z[:1], z[:1]], 0)
    out = losses.biject_loss(z, z, tf.constant([1, 1]), margin=5.0).numpy()
    np.testing.assert_allclose(out, [0.0, 0.0], atol=1e-5)
    # different identities with identical reconstructions pay the full margin
    out = losses.biject_loss(z, z, tf.constant([1, 2]), margin=5.0).numpy()
    np.testing.assert_allclose(out, [5.0, 5.0], atol=1e-4)


def test_gradient_penalty_linear_critic_by_hand():
    # D(x) = sum(w * x): grad = w everywhere, ||w|| = sqrt(9 + 16) = 5 -> (5 - 1)^2 = 16
    w = tf.constant([[[[3.0]], [[4.0]]]])  # shape [1, 2, 1, 1]
    critic = lambda x: tf.reduce_sum(tf.reshape(x * w, [tf.shape(x)[0], -1]), -1)
    real = tf.random.normal([3, 2, 1, 1])
    fake = tf.random.normal([3, 2, 1, 1])
    gp = losses.gradient_penalty(critic, real, fake, tf.constant([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(gp.numpy(), [16.0, 16.0, 16.0], rtol=1e-5)


def test_gradient_penalty_quadratic_critic_depends_on_interpolate():
    # D(x) = 0.5 * sum(x^2): grad = x~, so the penalty is (||x~|| - 1)^2 at x~ = e r + (1-e) f
    critic = lambda x: 0.5 * tf.reduce_sum(tf.reshape(tf.square(x), [tf.shape(x)[0], -1]), -1)
    real = tf.constant([[[[2.0]]]])
    fake = tf.constant([[[[0.0]]]])
    gp = losses.gradient_penalty(critic, real, fake, tf.constant([0.75]))
    np.testing.assert_allclose(gp.numpy(), [(1.5 - 1.0) ** 2], rtol=1e-5)


def test_critic_recon_and_adversarial_terms():
    real = tf.constant([1.0, 2.0])
    fake = tf.constant([0.5, -1.0])
    np.testing.assert_allclose(losses.critic_wgan(real, fake, drift=0.1).numpy(),
                               [0.5 - 1.0 + 0.1, -1.0 - 2.0 + 0.4], rtol=1e-6)
    np.testing.assert_allclose(losses.generator_adversarial(fake).numpy(), [-0.5, 1.0])
    a = tf.constant([[[[1.0]], [[-1.0]]]])
    b = tf.constant([[[[0.0]], [[1.0]]]])
    # |1 - 0| + |-1 - 1| = 3 over 2 pixels
    np.testing.assert_allclose(losses.reconstruction_l1(a, b).numpy(), [1.5])


def test_generator_loss_eq8_is_the_weighted_sum_of_the_terms_present():
    terms = {"biject": tf.constant([1.0, 2.0]), "distill": tf.constant([3.0, 0.5]),
             "adversarial": tf.constant([-1.0, 4.0]), "recon": tf.constant([0.25, 0.75])}
    lambdas = {"biject": 0.001, "distill": 2.0, "adversarial": 0.5, "recon": 10.0}
    want = [0.001 * 1 + 2 * 3 + 0.5 * -1 + 10 * 0.25, 0.001 * 2 + 2 * 0.5 + 0.5 * 4 + 10 * 0.75]
    np.testing.assert_allclose(losses.generator_loss(terms, lambdas).numpy(), want, rtol=1e-6)
    # a term that is off is left out, whatever its weight
    only = {k: terms[k] for k in ("adversarial", "recon")}
    np.testing.assert_allclose(losses.generator_loss(only, lambdas).numpy(),
                               [0.5 * -1 + 10 * 0.25, 0.5 * 4 + 10 * 0.75], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown Eq. 8 terms"):
        losses.generator_loss({"pixels": terms["recon"]}, lambdas)


def test_diversity_term_is_the_capped_image_change_per_change_of_v():
    rng = np.random.default_rng(3)
    fa = rng.uniform(-1, 1, (3, 4, 4, 3))
    fb = rng.uniform(-1, 1, (3, 4, 4, 3))
    fb[2] = fa[2] + 0.01                # a draw of v that barely changes the image
    va, vb = rng.standard_normal((3, 8)), rng.standard_normal((3, 8))
    ratio = (np.abs(fa - fb).reshape(3, -1).mean(-1) / np.abs(va - vb).mean(-1))
    cap = 0.5 * (ratio[0] + ratio[2])   # caps example 0 (and 1 if larger), not example 2
    assert ratio[2] < cap < ratio[0]
    got = losses.diversity_sensitive(*(tf.constant(x, tf.float32) for x in (fa, fb, va, vb)),
                                     cap=cap).numpy()
    np.testing.assert_allclose(got, -np.minimum(ratio, cap), rtol=1e-5)
    # an extension term Eq. 8 sums like the others, with its own weight
    terms = {"recon": tf.constant([1.0, 2.0]), "diversity": tf.constant([-0.5, -0.1])}
    np.testing.assert_allclose(
        losses.generator_loss(terms, {"recon": 2.0, "diversity": 4.0}).numpy(),
        [2.0 - 2.0, 4.0 - 0.4], rtol=1e-6)


def test_critic_loss_eq9_and_flow_nll():
    real, fake, gp = tf.constant([1.0, -2.0]), tf.constant([0.5, 3.0]), tf.constant([0.1, 0.0])
    # D(fake) - D(real) + drift * D(real)^2 + gp_weight * gp
    want = [0.5 - 1.0 + 0.001 * 1.0 + 10 * 0.1, 3.0 + 2.0 + 0.001 * 4.0]
    np.testing.assert_allclose(losses.critic_loss(real, fake, gp).numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(losses.flow_nll(tf.constant([-3.0]), tf.constant([1.5])).numpy(),
                               [1.5])
