"""Whitebox mode: the matcher F itself, differentiated, in the place of F^S (section 3.3)."""
import json

import numpy as np
import pytest
import tensorflow as tf

from dibigan_tf.matchers.base import MatcherError, WhiteboxNetwork
from dibigan_tf.matchers.lenet import LeNetMatcher
from dibigan_tf.matchers.lenet import build_lenet
from tests.support import CountingMatcher
from tests.support import TINY, TINY_GAN_FLAGS, copy_stages, run_train


def test_whitebox_network_gives_lenet_taps_and_gradients_through_the_resize():
    tf.keras.utils.set_random_seed(0)
    matcher = LeNetMatcher(build_lenet(feature_dim=12))
    net = WhiteboxNetwork(matcher, (16, 16, 1))   # G draws 16x16, F takes 32x32
    x = tf.Variable(tf.random.uniform([2, 16, 16, 1], -1.0, 1.0))
    with tf.GradientTape() as tape:
        outputs = net(x)
        loss = tf.reduce_sum(outputs[-1])
    assert [tuple(o.shape) for o in outputs] == [(2, 16, 16, 32), (2, 8, 8, 64), (2, 12)]
    grad = tape.gradient(loss, x)
    assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0.0
    # the embedding is F's own on the resized image
    same = matcher.tf_embed(tf.image.resize(x, (32, 32), method="bilinear"))
    np.testing.assert_allclose(outputs[-1].numpy(), same.numpy(), atol=1e-5)


def test_whitebox_embedding_centred_like_a_student_on_centred_targets():
    """--student_center_targets in whitebox mode: the embedding minus the mean training
    feature, the taps unchanged."""
    tf.keras.utils.set_random_seed(0)
    matcher = LeNetMatcher(build_lenet(feature_dim=12))
    x = tf.random.uniform([4, 32, 32, 1], -1.0, 1.0)
    raw = WhiteboxNetwork(matcher, (32, 32, 1))(x)
    mean = raw[-1].numpy().mean(axis=0) + 5.0          # one dominant direction, as dlib's
    centred = WhiteboxNetwork(matcher, (32, 32, 1), embedding_mean=mean)(x)
    for a, b in zip(raw[:-1], centred[:-1]):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(centred[-1].numpy(), raw[-1].numpy() - mean, atol=1e-5)


def test_whitebox_refuses_a_blackbox_and_a_channel_mismatch():
    with pytest.raises(MatcherError, match="blackbox"):
        WhiteboxNetwork(CountingMatcher(), (4, 4, 1))
    with pytest.raises(MatcherError, match="channel"):
        WhiteboxNetwork(LeNetMatcher(build_lenet(feature_dim=4)), (32, 32, 3))


def test_whitebox_run_trains_no_student(tmp_path, tiny_base):
    # the session's shared matcher, store and H (tests/conftest.py), loaded as finished stages
    copy_stages(tiny_base, tmp_path / "wb", ["matcher", "features", "flow", "split.json"])
    run = run_train([f"--checkpoint_dir={tmp_path}", "--run_name=wb"] + TINY + TINY_GAN_FLAGS
                    + ["--augment_copies=1", "--augment_stages=student"], "digits_whitebox.flags",
                    timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert not (tmp_path / "wb" / "student").exists()
    report = json.loads((tmp_path / "wb" / "report" / "metrics.json").read_text())
    assert report["mode"] == "whitebox" and report["seconds"]["student"] == 0.0
    assert 0.0 <= report["recon_class_agreement"] <= 1.0
    # copies meant for F^S alone are not sent to F when no F^S trains
    split = json.loads((tmp_path / "wb" / "split.json").read_text())
    assert report["blackbox_queries_training_images"] == \
        len(split["train"]) + len(split["heldout"]), (report, {k: len(v) for k, v in split.items()})
    # L_distill was computed through F: its scalars are in the GAN's TensorBoard log
    tags = set()
    for path in (tmp_path / "wb" / "gan" / "tb").glob("events*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(v.tag for v in event.summary.value)
    assert "distill" in tags and "student_cosine" in tags, sorted(tags)
