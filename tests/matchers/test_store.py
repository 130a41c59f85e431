import numpy as np
import pytest

from dibigan_tf.matchers.base import MatcherError
from dibigan_tf.matchers.store import FeatureStore
from tests.support import CountingMatcher





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
    # the failed chunk's 10 images were handed to the matcher: sent (counted), not answered
    assert resumed.seen == 20 and store.total_queries == 50 and store.total_answered == 40
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


def _warnings(monkeypatch):
    """Captures the store's absl warnings as formatted strings."""
    import dibigan_tf.matchers.store as store_module
    seen = []
    monkeypatch.setattr(store_module.logging, "warning", lambda msg, *args: seen.append(msg % args))
    return seen


def test_a_damaged_shard_is_named_and_only_its_images_are_asked_again(tmp_path, monkeypatch):
    import glob
    import os
    images = _images(30)
    first = FeatureStore(str(tmp_path), CountingMatcher(), chunk_size=10)
    expected = first.features(images)
    shards = sorted(glob.glob(os.path.join(first.dir, "shard-*.npz")))
    assert len(shards) == 3
    data = open(shards[1], "rb").read()
    with open(shards[1], "wb") as handle:   # cut short, as by a full disk
        handle.write(data[:len(data) // 2])
    warnings = _warnings(monkeypatch)
    again = CountingMatcher()
    store = FeatureStore(str(tmp_path), again, chunk_size=10)
    assert len(warnings) == 1 and shards[1] in warnings[0] and "damaged" in warnings[0]
    assert len(store) == 20
    np.testing.assert_array_equal(store.features(images), expected)
    assert again.seen == 10                       # the damaged shard's ten images, no other
    assert store.total_queries == 40
    # the new shard does not overwrite an existing one, and every shard now reads
    assert len(glob.glob(os.path.join(first.dir, "shard-*.npz"))) == 3
    assert os.path.exists(shards[1] + ".damaged")
    third = CountingMatcher()
    FeatureStore(str(tmp_path), third, chunk_size=10).features(images)
    assert third.seen == 0
