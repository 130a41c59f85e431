import numpy as np
import pytest

from dibigan_tf.matchers.base import Matcher, MatcherError
from dibigan_tf.matchers.store import FeatureStore


class CountingMatcher(Matcher):
    """A blackbox stand-in: embedding = pixel means per row, counts every image it sees."""
    name = "counting"

    def __init__(self, dim=4, fail_after=None, nan=False, wrong_dim=False):
        self.seen = 0
        self.dim, self.fail_after, self.nan, self.wrong_dim = dim, fail_after, nan, wrong_dim

    @property
    def input_shape(self):
        return (4, 4, 1)

    @property
    def embedding_dim(self):
        return self.dim

    def _embed(self, images):
        if self.fail_after is not None and self.seen + len(images) > self.fail_after:
            raise ConnectionError("matcher went away")
        self.seen += len(images)
        out = images.reshape(len(images), 4, 4).mean(axis=2).astype(np.float32) + 1.0
        if self.nan:
            out[0, 0] = np.nan
        return out[:, :3] if self.wrong_dim else out


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 1)).astype(np.uint8)


def test_each_image_queried_once_across_runs(tmp_path):
    images = _images(50)
    m1 = CountingMatcher()
    s1 = FeatureStore(str(tmp_path), m1, chunk_size=16)
    f1 = s1.features(images)
    assert m1.seen == 50 and s1.total_queries == 50
    # the same images again, shuffled and duplicated, in a new store (a later run)
    m2 = CountingMatcher()
    s2 = FeatureStore(str(tmp_path), m2, chunk_size=16)
    order = np.r_[np.arange(50)[::-1], 3, 3]
    f2 = s2.features(images[order])
    assert m2.seen == 0 and s2.total_queries == 50
    np.testing.assert_array_equal(f2, f1[order])


def test_duplicates_within_a_batch_are_one_query(tmp_path):
    images = _images(5)
    m = CountingMatcher()
    FeatureStore(str(tmp_path), m).features(np.concatenate([images, images]))
    assert m.seen == 5


def test_failure_midway_keeps_what_was_answered_and_resumes(tmp_path):
    images = _images(40)
    failing = CountingMatcher(fail_after=20)
    with pytest.raises(ConnectionError):
        FeatureStore(str(tmp_path), failing, chunk_size=10).features(images)
    assert failing.seen == 20
    resumed = CountingMatcher()
    store = FeatureStore(str(tmp_path), resumed, chunk_size=10)
    assert len(store) == 20
    feats = store.features(images)
    assert resumed.seen == 20 and store.total_queries == 40
    np.testing.assert_allclose(feats, CountingMatcher()._embed(images))


def test_nan_and_wrong_dimension_are_clear_errors(tmp_path):
    with pytest.raises(MatcherError, match="non-finite"):
        FeatureStore(str(tmp_path / "a"), CountingMatcher(nan=True)).features(_images(3))
    with pytest.raises(MatcherError, match="shape"):
        FeatureStore(str(tmp_path / "b"), CountingMatcher(wrong_dim=True)).features(_images(3))
    FeatureStore(str(tmp_path / "c"), CountingMatcher()).features(_images(3))
    with pytest.raises(MatcherError, match="stored features have shape"):
        FeatureStore(str(tmp_path / "c"), CountingMatcher(dim=5))


def test_wrong_image_format_refused(tmp_path):
    store = FeatureStore(str(tmp_path), CountingMatcher())
    with pytest.raises(MatcherError, match="uint8"):
        store.features(_images(2).astype(np.float32))
    with pytest.raises(MatcherError, match="shape"):
        store.features(np.zeros((2, 5, 5, 1), np.uint8))
