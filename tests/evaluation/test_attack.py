"""Attack success (type-I/II TAR at FAR), MS-SSIM diversity and the Inception Score."""
import numpy as np
import pytest

from dibigan_tf.evaluation.attack import (InceptionError, attack_success, inception_score,
                                          load_inception, ms_ssim_pairs, ms_ssim_scales,
                                          threshold_at_far)


def test_threshold_at_far_accepts_exactly_the_allowed_impostors():
    d = np.arange(1, 1001, dtype=float)          # 1000 impostor distances 1..1000
    t = threshold_at_far(d, 1e-2)                # may accept 10 of them
    assert np.sum(d <= t) == 10
    t = threshold_at_far(d, 1e-4)                # may accept none
    assert np.sum(d <= t) == 0 and t < 1.0
    ties = np.array([1.0, 1.0, 1.0, 2.0, 3.0] * 20)
    t = threshold_at_far(ties, 0.1)              # 10 allowed, but 60 tie at 1.0: accept none
    assert np.sum(ties <= t) <= 10


def test_attack_success_type1_and_type2_by_hand():
    # 4 people, 2 images each, on the unit circle; person k at angle 90k degrees, images +-5 deg
    angles = np.deg2rad([0, 5, 90, 95, 180, 185, 270, 275])
    real = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.repeat(np.arange(4), 2)
    pairs_a, pairs_b, same = [], [], []
    for i in range(8):
        for j in range(i + 1, 8):
            pairs_a.append(i)
            pairs_b.append(j)
            same.append(labels[i] == labels[j])
    # reconstructions: people 0 and 1 exact copies, people 2 and 3 land on person 0 and 1
    recon = real.copy()
    recon[4:8] = real[0:4]
    out = attack_success(real, recon, pairs_a, pairs_b, same, fars=(1e-3,))
    assert out["attack_impostor_pairs"] == 24 and out["attack_type2_pairs"] == 4
    # FAR 1e-3 of 24 impostors accepts none: the threshold sits below the smallest impostor
    # distance (90-5 = 85 degrees), far above the 5-degree genuine distances
    assert out["attack_type1_tar_at_far_1e-03"] == 0.5           # people 0 and 1 only
    assert out["attack_type2_tar_at_far_1e-03"] == 0.5
    assert out["real_genuine_tar_at_far_1e-03"] == 1.0
    assert out["attack_tar_at_far_1e-03_resolvable"] is False    # 24 impostors < 1 / 1e-3


def test_ms_ssim_scales_and_pairs():
    assert ms_ssim_scales(256) == 5 and ms_ssim_scales(64) == 3 and ms_ssim_scales(32) == 2
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    same_looking = np.stack([base] * 6)
    labels = np.arange(6)
    assert ms_ssim_pairs(same_looking, labels, num_pairs=20) > 0.99   # no diversity at all
    diverse = rng.integers(0, 256, (6, 64, 64, 3)).astype(np.uint8)
    assert ms_ssim_pairs(diverse, labels, num_pairs=20) < 0.2
    with pytest.raises(ValueError, match="two identities"):
        ms_ssim_pairs(diverse, np.zeros(6), num_pairs=5)


def test_inception_score_on_a_stand_in_classifier():
    # a "classifier" that puts image i in class i mod k with certainty: IS = k exactly
    def certain(k):
        def classify(x, training=False):
            n = int(x.shape[0])
            brightness = np.round((np.asarray(x)[:, 0, 0, 0] + 1.0) * 127.5).astype(int)
            p = np.full((n, k), 1e-9)
            p[np.arange(n), brightness % k] = 1.0
            return p / p.sum(axis=1, keepdims=True)
        return classify
    images = np.stack([np.full((8, 8, 3), i, np.uint8) for i in range(40)])
    mean, std = inception_score(images, certain(4), splits=2, input_size=8)
    assert abs(mean - 4.0) < 1e-3 and std < 1e-6
    uniform = lambda x, training=False: np.full((int(x.shape[0]), 5), 0.2)  # noqa: E731
    mean, _ = inception_score(images, uniform, splits=1, input_size=8)
    assert abs(mean - 1.0) < 1e-9
    with pytest.raises(InceptionError, match="probabilities"):
        inception_score(images, lambda x, training=False: -np.ones((int(x.shape[0]), 3)),
                        input_size=8)


def test_inception_weights_must_be_a_local_file(tmp_path):
    with pytest.raises(InceptionError, match="nothing is downloaded"):
        load_inception(str(tmp_path / "missing.h5"))
    with pytest.raises(InceptionError, match="--inception_weights"):
        load_inception("")
