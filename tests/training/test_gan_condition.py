"""G's conditioning input: matcher features centred and scaled so that a held-out image cannot
blow the condition up (a dimension that never fired on the training split)."""
import numpy as np
import pytest

from dibigan_tf.training.gan import feature_statistics


def _relu_features(rng, n, dim, dead):
    f = np.maximum(rng.standard_normal((n, dim)) + 0.3, 0.0)
    f[:, :dead] = 0.0            # dimensions that never fire on these images
    return f.astype(np.float32)


@pytest.mark.parametrize("norm", ["global", "per_dim"])
def test_condition_is_centred_and_bounded_on_unseen_dimensions(norm):
    rng = np.random.default_rng(0)
    train = _relu_features(rng, 500, 64, dead=8)
    mean, scale = feature_statistics(train, norm)
    z = (train - mean) / scale
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-5)
    # On average one unit of variance per dimension (global) / per live dimension (per_dim).
    if norm == "global":
        np.testing.assert_allclose(np.mean(z.var(axis=0)), 1.0, rtol=1e-4)
    else:
        np.testing.assert_allclose(z.var(axis=0)[8:], 1.0, rtol=1e-3)
    # A held-out image that fires a dead dimension at a typical activation level (1.0) gives a
    # condition of ordinary size, not 1e6.
    held = train[:1].copy()
    held[0, 0] = 1.0
    zh = (held - mean) / scale
    rms = np.sqrt(np.mean(train.var(axis=0)))
    assert abs(zh[0, 0]) == pytest.approx(1.0 / rms if norm == "global" else 10.0 / rms,
                                          rel=1e-4)
    assert np.abs(zh).max() < 20


def test_global_scale_is_one_number_and_bad_input_refused():
    rng = np.random.default_rng(1)
    train = _relu_features(rng, 100, 16, dead=2)
    _, scale = feature_statistics(train, "global")
    assert np.all(scale == scale[0])
    with pytest.raises(ValueError, match="feature_norm"):
        feature_statistics(train, "l2")
    with pytest.raises(ValueError, match="feature matrix"):
        feature_statistics(train[0], "global")
