"""v_variation: how much G's random input v changes the image, relative to how much the feature
f does, and the type-I attack success of every draw of v (fake generators and an identity F)."""
import warnings

import numpy as np
import pytest

from dibigan_tf.evaluation.attack import V_VARIATION_CAP, v_variation

H = W = 4
LATENT = 3
# two orthogonal image patterns: P on the left half of the image, Q on the right half
P = np.zeros((H, W, 1))
P[:, :2] = np.arange(1, 9).reshape(H, 2, 1)
Q = np.zeros((H, W, 1))
Q[:, 2:] = np.arange(8, 0, -1).reshape(H, 2, 1) * 0.5


def flatten(images):
    """A stand-in F: the raw pixels."""
    images = np.asarray(images, np.float64)
    return images.reshape(len(images), -1)


class Generator:
    """output = a * s_i * P + b * t_k * Q with s_i = f_i[0] and t_k = v_k . w; records what it
    was given."""
    latent_dim = LATENT

    def __init__(self, a=1.0, b=1.0):
        self.a, self.b, self.w = a, b, np.array([1.0, -0.5, 0.25])
        self.s, self.t = [], []

    def __call__(self, features, v):
        s = np.asarray(features, np.float64)[:, 0]
        t = np.asarray(v, np.float64) @ self.w
        assert np.all(t == t[0])            # one v for every feature of a call
        self.s.append(s)
        self.t.append(t[0])
        return self.a * s[:, None, None, None] * P + self.b * t[:, None, None, None] * Q


class Identity:
    """Images that carry f (F = flatten recovers it) plus v-dependent noise; the call numbered
    `destroy` returns one grey image for every feature."""
    latent_dim = LATENT

    def __init__(self, noise, destroy=None):
        self.noise, self.destroy, self.calls = noise, destroy, 0

    def __call__(self, features, v):
        f = np.asarray(features, np.float64)
        self.calls += 1
        if self.calls == self.destroy:
            return np.full((len(f), 4, 4, 1), 0.5)
        rng = np.random.default_rng(int(abs(v[0, 0]) * 1e6))
        x = f + self.noise * rng.standard_normal(f.shape)
        return x.reshape(len(f), 4, 4, 1)


def features(n, dim=5, seed=1):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_a_generator_that_ignores_v_gives_exactly_zero():
    f = features(20)
    gen = Generator(a=1.0, b=0.0)
    out = v_variation(gen, f, flatten(gen(f, np.zeros((20, LATENT)))), flatten, seed=3)
    assert out["v_variation"] == 0.0 and out["v_variation_std_across_v"] == 0.0
    assert out["v_variation_std_across_features"] > 0
    assert out["v_variation_features"] == 20 and out["v_variation_draws"] == 8
    # images that carry the whole of f and ignore v: the reconstruction is the real image
    f = features(64, dim=16, seed=2)
    out = v_variation(Identity(noise=0.0), f, f, flatten)
    assert out["v_variation"] == 0.0
    key = "attack_type1_tar_at_far_1e-03_v"
    assert out[key + "_mean"] == out[key + "_worst"] == 1.0


def test_a_generator_that_ignores_f_gives_the_cap_without_dividing_by_zero():
    f = features(20)
    gen = Generator(a=0.0, b=1.0)
    real = flatten(Generator(a=1.0, b=0.0)(f, np.zeros((20, LATENT))))
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # no division or invalid-value warning either
        out = v_variation(gen, f, real, flatten)
    assert out["v_variation_std_across_features"] == 0.0
    assert out["v_variation_std_across_v"] > 0
    assert out["v_variation"] == V_VARIATION_CAP
    # one image for everyone: no identity
    assert out["attack_type1_tar_at_far_1e-03_v_worst"] == 0.0


@pytest.mark.parametrize("a, b", [(1.0, 1.0), (2.0, 0.3), (0.5, 4.0)])
def test_the_ratio_of_an_analytic_generator(a, b):
    f = features(30)
    gen = Generator(a=a, b=b)
    out = v_variation(gen, f, flatten(gen(f, np.zeros((30, LATENT)))), flatten, num_draws=8,
                      seed=7)
    gen.s, gen.t = gen.s[1:], gen.t[1:]        # drop the call that made the real images
    assert len(gen.t) == 8
    s_std = np.std(gen.s[0], ddof=1)
    t_std = np.std(gen.t, ddof=1)
    expected = (abs(b) * t_std * np.mean(np.abs(Q))) / (abs(a) * s_std * np.mean(np.abs(P)))
    assert out["v_variation"] == pytest.approx(expected, rel=1e-6)
    assert out["v_variation_std_across_v"] == pytest.approx(abs(b) * t_std * np.mean(np.abs(Q)),
                                                            rel=1e-9)


def test_features_are_capped_at_n_and_the_impostor_pairs_counted():
    gen = Generator()
    f = features(100)
    real = flatten(gen(f, np.zeros((100, LATENT))))
    out = v_variation(gen, f, real, flatten, num_features=64, num_draws=3)
    assert out["v_variation_features"] == 64 and out["v_variation_draws"] == 3
    assert out["attack_type1_v_impostor_pairs"] == 64 * 63
    assert len(out["attack_type1_tar_at_far_1e-03_v_draws"]) == 3
    # fewer than N: all of them; with labels, same-identity pairs are no impostors
    labels = np.repeat(np.arange(5), 4)
    out = v_variation(gen, f[:20], real[:20], flatten, labels=labels)
    assert out["v_variation_features"] == 20
    assert out["attack_type1_v_impostor_pairs"] == 20 * 20 - 5 * 4 * 4
    # more images than N: one image of each identity first
    gen.s = []
    labels = np.repeat(np.arange(50), 2)
    v_variation(gen, f, real, flatten, num_features=40, num_draws=2, labels=labels)
    chosen = [np.flatnonzero(f[:, 0] == s)[0] for s in gen.s[0]]
    assert len(set(labels[chosen])) == 40


def test_worst_draw_is_at_most_the_mean_and_drops_when_a_draw_destroys_identity():
    f = features(64, dim=16, seed=2)
    noisy = v_variation(Identity(noise=0.9), f, f, flatten, seed=0)
    tars = noisy["attack_type1_tar_at_far_1e-03_v_draws"]
    assert 0.0 < noisy["attack_type1_tar_at_far_1e-03_v_worst"] < 1.0     # a graded case
    assert noisy["attack_type1_tar_at_far_1e-03_v_worst"] == min(tars)
    assert (noisy["attack_type1_tar_at_far_1e-03_v_worst"]
            <= noisy["attack_type1_tar_at_far_1e-03_v_mean"])
    assert noisy["attack_type1_tar_at_far_1e-03_v_mean"] == pytest.approx(np.mean(tars))

    clean = v_variation(Identity(noise=0.05), f, f, flatten, seed=0)
    assert clean["attack_type1_tar_at_far_1e-03_v_worst"] == 1.0
    broken = v_variation(Identity(noise=0.05, destroy=4), f, f, flatten, seed=0)
    assert broken["attack_type1_tar_at_far_1e-03_v_draws"][3] == 0.0
    assert broken["attack_type1_tar_at_far_1e-03_v_worst"] == 0.0
    assert broken["attack_type1_tar_at_far_1e-03_v_mean"] == pytest.approx(7 / 8)


def test_refuses_what_it_cannot_measure():
    gen = Generator()
    f = features(4)
    real = flatten(gen(f, np.zeros((4, LATENT))))
    with pytest.raises(ValueError, match="2 draws"):
        v_variation(gen, f, real, flatten, num_draws=1)
    with pytest.raises(ValueError, match="2 features"):
        v_variation(gen, f[:1], real[:1], flatten)
    with pytest.raises(ValueError, match="2 identities"):
        v_variation(gen, f, real, flatten, labels=np.zeros(4))
