"""dlib's face descriptor rebuilt in Keras from its weight file (`--matcher=dlib_keras`) against
dlib itself on real face chips (scikit-image's astronaut photo, aligned by dlib, plus flips and
crops of its chip), and the reader's refusal of truncated, altered and foreign files. Skipped,
with the reason, only when dlib or the photo cannot be installed."""
import os

import numpy as np
import pytest
from PIL import Image

dlib = pytest.importorskip("dlib", reason="dlib-bin is not installed (pip install -e '.[faces]')")
models = pytest.importorskip("face_recognition_models", reason="face_recognition_models not "
                             "installed")
pytest.importorskip("skimage.data", reason="scikit-image (ships the test face photo) is not "
                    "installed")

import tensorflow as tf  # noqa: E402

from dibigan_tf.config import MatcherConfig  # noqa: E402
from dibigan_tf.data.align import DlibAligner  # noqa: E402
from dibigan_tf.matchers.base import MatcherError, WhiteboxNetwork  # noqa: E402
from dibigan_tf.matchers.dlib_dat import (ARCHITECTURE, DlibDatError,  # noqa: E402
                                          read_dlib_network)
from dibigan_tf.matchers.dlib_keras import (DlibKerasMatcher,  # noqa: E402
                                            differentiable_reference)
from dibigan_tf.matchers.dlib_matcher import DlibMatcher  # noqa: E402
from dibigan_tf.matchers.registry import open_matcher  # noqa: E402
from tests.support import astronaut  # noqa: E402

WEIGHTS = models.face_recognition_model_location()


@pytest.fixture(scope="module")
def chip():
    return DlibAligner(size=150).align(astronaut()).image


@pytest.fixture(scope="module")
def chips(chip):
    """The chip, its mirror image, upside down, and crops of it (resized back to 150)."""
    def crop(top, left, bottom, right):
        return np.asarray(Image.fromarray(chip[top:bottom, left:right]).resize(
            (150, 150), Image.BICUBIC))
    return np.stack([chip, chip[:, ::-1], chip[::-1], crop(10, 5, 140, 145),
                     crop(0, 0, 120, 120), crop(30, 30, 150, 150), crop(20, 0, 150, 130)[:, ::-1],
                     np.ascontiguousarray(np.rot90(chip))])


@pytest.fixture(scope="module")
def keras_matcher():
    return DlibKerasMatcher(image_size=150)


@pytest.fixture(scope="module")
def dlib_matcher():
    return DlibMatcher(image_size=150)


def _cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_keras_model_equals_dlib_on_real_chips(chips, keras_matcher, dlib_matcher):
    ours = keras_matcher.embed(chips)
    theirs = dlib_matcher.embed(chips)
    assert ours.shape == theirs.shape == (len(chips), 128)
    assert np.abs(ours - theirs).max() <= 1e-5
    assert _cosines(ours, theirs).min() >= 0.99999
    # the raw descriptor, not normalised: dlib's distances (same person below 0.6) carry over
    assert abs(np.linalg.norm(theirs[0]) - np.linalg.norm(ours[0])) < 1e-5
    d_ours = np.linalg.norm(ours[:, None] - ours[None], axis=-1)
    d_theirs = np.linalg.norm(theirs[:, None] - theirs[None], axis=-1)
    assert np.abs(d_ours - d_theirs).max() <= 1e-5
    assert d_theirs[0, 1] < 0.6 and d_theirs[0, 3] < 0.6     # mirror image and a crop: same person


def test_smaller_chips_resized_as_dlib_does(chip):
    small = np.stack([np.asarray(Image.fromarray(c).resize((64, 64), Image.BOX))
                      for c in (chip, chip[:, ::-1])])
    ours = DlibKerasMatcher(image_size=64).embed(small)
    theirs = DlibMatcher(image_size=64).embed(small)
    assert np.abs(ours - theirs).max() <= 1e-5


def test_reader_consumes_every_byte_and_checks_the_structure():
    net = read_dlib_network(WEIGHTS)
    assert net.offset == net.size == os.path.getsize(WEIGHTS)
    assert len(net.layers) == len(ARCHITECTURE) == 130
    # the input layer's own means (the model reads them; they are not written in the code)
    np.testing.assert_allclose(net.means, (122.782, 117.001, 104.298), atol=1e-3)
    assert net.chip_size == 150 and abs(net.distance_threshold - 0.6) < 1e-6
    stem = net.layers[-1]
    assert stem.kind == "con" and stem.values["filters"].shape == (32, 3, 7, 7)
    assert stem.values["padding"] == 0 and net.layers[-6].values["padding"] == 1
    assert net.layers[0].values["weights"].shape == (256, 128)
    # every weight of the file: parameters * 4 bytes are nearly the whole file
    assert 0.99 < 4 * net.parameter_count / net.size < 1.0


def _one_line(error, path):
    text = str(error.value)
    assert "\n" not in text and str(path) in text and "byte" in text
    return text


@pytest.mark.parametrize("keep", [1, 400, 11_000_000, -1])
def test_truncated_file_is_one_line_naming_file_and_offset(tmp_path, keep):
    with open(WEIGHTS, "rb") as handle:
        data = handle.read()
    path = tmp_path / "cut.dat"
    path.write_bytes(data[:keep])
    with pytest.raises(DlibDatError) as error:
        read_dlib_network(path)
    text = _one_line(error, path)
    assert "truncated" in text
    assert f"of {len(data[:keep])}" in text


def test_trailing_or_altered_bytes_are_refused(tmp_path):
    with open(WEIGHTS, "rb") as handle:
        data = handle.read()
    longer = tmp_path / "longer.dat"
    longer.write_bytes(data + b"\0")
    with pytest.raises(DlibDatError, match=r"1 bytes left after the network at byte 22466066"):
        read_dlib_network(longer)
    # the add_layer version of the fc layer (the first wrapper after the loss layer, byte 29)
    changed = bytearray(data)
    assert changed[29:31] == b"\x01\x02"
    changed[30] = 7
    altered = tmp_path / "altered.dat"
    altered.write_bytes(bytes(changed))
    with pytest.raises(DlibDatError) as error:
        read_dlib_network(altered)
    assert "wrapper 0 (fc" in _one_line(error, altered) and "at byte 29 " in str(error.value)
    # a layer name: the first relu_ (the stem's) renamed
    at = data.index(b"\x01\x05relu_")
    renamed = tmp_path / "renamed.dat"
    renamed.write_bytes(data[:at] + b"\x01\x05reLU_" + data[at + 7:])
    with pytest.raises(DlibDatError, match=rf"relu layer is 'reLU_', expected 'relu_' at byte "
                                           rf"{at} "):
        read_dlib_network(renamed)
    with pytest.raises(MatcherError, match="cannot read"):
        read_dlib_network(tmp_path / "missing.dat")


def test_foreign_files_are_refused_in_one_line(tmp_path):
    folder = os.path.dirname(WEIGHTS)
    # another dlib network (the CNN face detector) and a dlib model that is no network
    for name in ("mmod_human_face_detector.dat", "shape_predictor_5_face_landmarks.dat"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            with pytest.raises(DlibDatError) as error:
                read_dlib_network(path)
            _one_line(error, path)
    png = tmp_path / "photo.png"
    Image.fromarray(astronaut()).save(png)
    with pytest.raises(DlibDatError) as error:
        read_dlib_network(png)
    assert "at byte 0 " in _one_line(error, png)


def test_whitebox_taps_and_gradients(chip, keras_matcher):
    assert keras_matcher.differentiable and keras_matcher.embedding_dim == 128
    unit = tf.constant(chip[None].astype(np.float32) / 127.5 - 1.0)
    with tf.GradientTape() as tape:
        tape.watch(unit)
        outputs = keras_matcher.tf_outputs(unit)
        loss = tf.reduce_sum(outputs[-1] * tf.linspace(-1.0, 1.0, 128))
    shapes = [tuple(o.shape[1:]) for o in outputs]
    assert shapes == [(35, 35, 32), (17, 17, 64), (8, 8, 128), (4, 4, 256), (2, 2, 256), (128,)]
    grad = tape.gradient(loss, unit).numpy()
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0
    np.testing.assert_allclose(outputs[-1].numpy()[0], keras_matcher.embed(chip[None])[0],
                               atol=1e-5)
    # as whitebox mode calls it: G's 64x64 images resized inside the graph
    net = WhiteboxNetwork(DlibKerasMatcher(image_size=150), (64, 64, 3))
    small = tf.image.resize(unit, (64, 64))
    assert [tuple(o.shape[1:]) for o in net(small)][-1] == (128,)


def test_registry_store_key_and_refusals(dlib_matcher):
    opened = open_matcher(MatcherConfig(name="dlib_keras"), (150, 150, 3))
    assert isinstance(opened, DlibKerasMatcher) and opened.input_shape == (150, 150, 3)
    key = opened.store_key
    assert key.startswith("dlibkeras-") and key.endswith("-aligned-150")
    assert key != dlib_matcher.store_key       # its own store: see DlibKerasMatcher.store_key
    assert DlibKerasMatcher(image_size=64).store_key != key
    with pytest.raises(MatcherError, match="aligned"):
        open_matcher(MatcherConfig(name="dlib_keras", chip="landmarks"), (150, 150, 3))
    with pytest.raises(MatcherError, match="jitter"):
        DlibKerasMatcher(num_jitters=2)
    assert isinstance(differentiable_reference(dlib_matcher), DlibKerasMatcher)
    assert differentiable_reference(opened) is opened
