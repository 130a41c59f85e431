"""insightface verification files (and pickles that try to run code), CelebA identity lists,
similarity alignment onto the ArcFace template, and prepared TFDS face datasets. Every input is
written by the test itself; nothing is downloaded."""
import builtins
import io
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from dibigan_tf.data.celeba import find_celeba, read_celeba_identities
from dibigan_tf.data.base import DataError
from dibigan_tf.data.faces import load_face_folders
from dibigan_tf.data.insightface_bin import read_verification_bin
from dibigan_tf.data.similarity import (ARCFACE_TEMPLATE_112, apply_affine, arcface_template,
                                        estimate_similarity, warp_affine)

from tests.support import MeanAligner


# ---------------------------------------------------------------- insightface .bin files

def _face(seed, size=112):
    """A smooth colour image (JPEG keeps it close)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(0.3, 1.0, 3)
    image = np.stack([x * a, y * b, (x + y) * c / 2], axis=-1) * 255.0 / size
    return np.clip(image, 0, 255).astype(np.uint8)


def _encode(image, fmt="JPEG"):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _pairs(n=3):
    images = [_face(i) for i in range(2 * n)]
    issame = [i % 2 == 0 for i in range(n)]
    return images, issame


def _py2_pickle(bins, issame):
    """What Python 2's cPickle writes for (list of str, list of bool) under protocol 2: str as
    SHORT_BINSTRING / BINSTRING, booleans as NEWTRUE/NEWFALSE or the old INT form I01 / I00."""
    out = [b"\x80\x02", b"]q\x00("]
    for data in bins:
        if len(data) < 256:
            out.append(b"U" + bytes([len(data)]) + data)
        else:
            out.append(b"T" + struct.pack("<i", len(data)) + data)
    out.append(b"e]q\x01(")
    for i, same in enumerate(issame):
        out.append((b"\x88" if same else b"\x89") if i % 2 else
                   (b"I01\n" if same else b"I00\n"))
    out.append(b"e\x86q\x02.")
    return b"".join(out)


@pytest.mark.parametrize("protocol", [0, 2, 4, "py2"])
def test_read_verification_bin(tmp_path, protocol):
    images, issame = _pairs(3)
    bins = [_encode(im, "PNG" if i == 1 else "JPEG") for i, im in enumerate(images)]
    path = tmp_path / "lfw.bin"
    path.write_bytes(_py2_pickle(bins, issame) if protocol == "py2"
                     else pickle.dumps((bins, issame), protocol=protocol))
    read, same = read_verification_bin(str(path))
    assert read.shape == (6, 112, 112, 3) and read.dtype == np.uint8
    assert same.dtype == bool and same.tolist() == issame
    assert (read[1] == images[1]).all()   # the PNG is exact
    assert np.abs(read.astype(int) - np.stack(images).astype(int)).mean() < 2.0
    first, same1 = read_verification_bin(str(path), max_pairs=2)
    assert first.shape[0] == 4 and same1.tolist() == issame[:2] and (first == read[:4]).all()


def test_greyscale_images_in_a_bin_become_rgb(tmp_path):
    grey = _encode(_face(0)[..., 0])
    path = tmp_path / "g.bin"
    # protocol 5 writes a bytearray without naming the builtins.bytearray class
    path.write_bytes(pickle.dumps(([grey, bytearray(grey)], [True]), protocol=5))
    read, _ = read_verification_bin(str(path))
    assert read.shape == (2, 112, 112, 3) and (read[..., 0] == read[..., 2]).all()


class _System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Eval:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return builtins.eval, (self.code,)


def test_a_bin_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    pwned = tmp_path / "pwned"
    good = [_encode(im) for im in _pairs(1)[0]]
    attacks = {
        "system": ([_System(f"touch {pwned}"), good[1]], [True]),
        "eval": ([good[0], _Eval(f"open({str(pwned)!r}, 'w').write('x')")], [True]),
        "label": (good, [_System(f"touch {pwned}")]),
        "whole": _System(f"touch {pwned}"),
    }
    for name, payload in attacks.items():
        for protocol in (0, 2, 4):
            path = tmp_path / f"{name}-{protocol}.bin"
            path.write_bytes(pickle.dumps(payload, protocol=protocol))
            refused = "refuses to load (posix|nt|os|builtins|__builtin__)\\."
            with pytest.raises(DataError, match=refused) as error:
                read_verification_bin(str(path))
            assert "only bytes, lists, tuples and booleans" in str(error.value)
            assert str(path) in str(error.value)
            assert not pwned.exists(), (name, protocol)
    # control: the payloads are live (plain pickle would have run them)
    pickle.loads(pickle.dumps(attacks["eval"], protocol=4))
    assert pwned.exists()


def test_codecs_stand_in_only_reencodes_latin1(tmp_path):
    # _codecs.encode is how Python 3 pickles bytes under protocol 2; any other use is refused
    import codecs

    class Rot13:
        def __reduce__(self):
            return codecs.encode, ("abc", "rot13")

    path = tmp_path / "codec.bin"
    path.write_bytes(pickle.dumps(([Rot13(), b"x"], [True]), protocol=2))
    with pytest.raises(DataError, match="_codecs.encode"):
        read_verification_bin(str(path))


@pytest.mark.parametrize("payload,message", [
    ({"bins": [], "issame": []}, "expected a pickled \\(bins, issame_list\\) pair, got dict"),
    (([b"a", b"b", b"c"],), "of length 1"),
    (([b"a", b"b", b"c"], [True]), "3 images for 1 pairs"),
    (([b"a", b"b"], [1]), "issame_list\\[0\\] is 1 \\(int\\)"),
    (([b"a", b"b"], ["True"]), "not a boolean"),
    ((["text", b"b"], [True]), "bins\\[0\\] is a str"),
    ((b"ab", [True]), "bins must be a list"),
    (([b"a", b"b"], True), "issame_list must be a list"),
    (([], []), "holds no pairs"),
])
def test_wrong_structure_is_refused(tmp_path, payload, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(DataError, match=message):
        read_verification_bin(str(path))


def test_numpy_arrays_are_refused(tmp_path):
    good = [_encode(im) for im in _pairs(1)[0]]
    for payload in ((np.array([1, 2]), [True]), (good, np.array([True])),
                    (good, [np.bool_(True)])):
        path = tmp_path / "np.bin"
        path.write_bytes(pickle.dumps(payload, protocol=4))
        with pytest.raises(DataError, match="refuses to load numpy"):
            read_verification_bin(str(path))


def test_undecodable_image_and_broken_file(tmp_path):
    bins = [_encode(im) for im in _pairs(2)[0]]
    bins[3] = b"\xff\xd8 not really a jpeg"
    path = tmp_path / "broken.bin"
    path.write_bytes(pickle.dumps((bins, [True, False]), protocol=4))
    with pytest.raises(DataError, match="image 3 \\(pair 1\\): cannot be decoded"):
        read_verification_bin(str(path))
    assert read_verification_bin(str(path), max_pairs=1)[0].shape[0] == 2
    data = pickle.dumps(([_encode(im) for im in _pairs(1)[0]], [True]), protocol=4)
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError, match="not a readable verification pickle"):
        read_verification_bin(str(path))
    with pytest.raises(DataError, match="cannot read"):
        read_verification_bin(str(tmp_path / "missing.bin"))
    odd = [_encode(_face(0)), _encode(_face(1, size=64))]
    path.write_bytes(pickle.dumps((odd, [True]), protocol=4))
    with pytest.raises(DataError, match="differ in size"):
        read_verification_bin(str(path))


# ---------------------------------------------------------------- CelebA identity lists

def _celeba(root, lines, images, folder="images", identity_name="identity.txt"):
    """Writes an identity file and images {file: colour} under root."""
    os.makedirs(root / folder, exist_ok=True)
    (root / identity_name).write_text("".join(line + "\n" for line in lines))
    for name, colour in images.items():
        Image.fromarray(np.full((16, 16, 3), colour, np.uint8)).save(str(root / folder / name),
                                                                      quality=100)
    return str(root / identity_name), str(root / folder)


COLOURS = {"7399": (30, 60, 90), "7367": (200, 40, 40), "12": (40, 200, 120)}


def test_read_celeba_identities_and_load(tmp_path):
    files = {"000093.jpg": "7399", "000180.jpg": "7367", "000277.jpg": "7399",
             "000306.jpg": "12", "000461.jpg": "7367"}
    lines = [f"{f} {i}" for f, i in files.items()] + ["", "000093.jpg 7399",   # a repeat
                                                      "000999.jpg 12"]        # not on disk
    identity_file, image_dir = _celeba(tmp_path / "sample", lines,
                                       {f: COLOURS[i] for f, i in files.items()})
    paths, names = read_celeba_identities(identity_file, image_dir)
    assert paths == list(files) + ["000999.jpg"]
    assert names == list(files.values()) + ["12"]
    assert find_celeba(str(tmp_path / "sample")) == (identity_file, image_dir)

    faces, stats = load_face_folders(image_dir, MeanAligner(), str(tmp_path / "cache"),
                                     records=(paths, names))
    assert stats["listed_missing"] == 1 and stats["images"] == 5 and stats["aligned"] == 5
    assert faces.class_names == ["12", "7367", "7399"]
    for image, label, path in zip(faces.images, faces.labels, faces.paths):
        name = faces.class_names[label]
        assert name == files[path]
        assert np.allclose(image[0, 0], COLOURS[name], atol=3)


def test_celeba_malformed_and_conflicting_lines(tmp_path):
    image_dir = tmp_path / "images"
    os.makedirs(image_dir)
    bad = {"three fields": ("000001.jpg 1\n000002.jpg 2 extra\n", ":2: expected"),
           "one field": ("\n000001.jpg\n", ":2: expected"),
           "not a number": ("000001.jpg 1\n000002.jpg alice\n", ":2: identity 'alice'"),
           "outside": ("../secret.jpg 1\n", ":1: file name '../secret.jpg' points outside"),
           "absolute": ("/etc/x.jpg 1\n", ":1: .* points outside"),
           "empty": ("\n\n", "lists no images"),
           "conflict": ("000001.jpg 5\n000002.jpg 5\n000001.jpg 6\n",
                        ":3: 000001.jpg is listed with identity 6 but line 1 gives it "
                        "identity 5")}
    for name, (text, message) in bad.items():
        (tmp_path / "identity.txt").write_text(text)
        with pytest.raises(DataError, match=message):
            read_celeba_identities(str(tmp_path / "identity.txt"), str(image_dir))
    with pytest.raises(DataError, match="cannot read"):
        read_celeba_identities(str(tmp_path / "nothing.txt"), str(image_dir))
    with pytest.raises(DataError, match="no such image directory"):
        read_celeba_identities(str(tmp_path / "identity.txt"), str(tmp_path / "nowhere"))


def test_find_celeba_layouts(tmp_path):
    # the official release: Anno/identity_CelebA.txt and Img/img_celeba, Img/img_align_celeba
    root = tmp_path / "CelebA"
    os.makedirs(root / "Anno")
    os.makedirs(root / "Img" / "img_celeba")
    os.makedirs(root / "Img" / "img_align_celeba")
    (root / "Anno" / "identity_CelebA.txt").write_text("000001.jpg 2880\n")
    assert find_celeba(str(root)) == (str(root / "Anno" / "identity_CelebA.txt"),
                                      str(root / "Img" / "img_celeba"))
    assert find_celeba(str(root), "img_align_celeba")[1] == str(root / "Img" /
                                                                "img_align_celeba")
    # flat: identity_CelebA.txt next to img_align_celeba
    flat = tmp_path / "flat"
    os.makedirs(flat / "img_align_celeba")
    (flat / "identity_CelebA.txt").write_text("000001.jpg 2880\n")
    assert find_celeba(str(flat)) == (str(flat / "identity_CelebA.txt"),
                                      str(flat / "img_align_celeba"))
    # our sample: identity.txt + images/
    _celeba(tmp_path / "sample", ["000001.jpg 1"], {"000001.jpg": (1, 2, 3)})
    assert find_celeba(str(tmp_path / "sample"))[1] == str(tmp_path / "sample" / "images")
    with pytest.raises(DataError, match="no image folder"):
        find_celeba(str(tmp_path / "sample"), "img_celeba")
    os.makedirs(tmp_path / "no_identity" / "images")
    with pytest.raises(DataError, match="no identity file"):
        find_celeba(str(tmp_path / "no_identity"))
    with pytest.raises(DataError, match="no such directory"):
        find_celeba(str(tmp_path / "missing"))


# ---------------------------------------------------------------- similarity and warping

def _similarity(angle_deg, scale, tx, ty, reflect=False):
    a = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    if reflect:
        rotation = rotation @ np.diag([1.0, -1.0])
    return np.hstack([scale * rotation, [[tx], [ty]]])


def test_estimate_similarity_recovers_a_known_transform():
    truth = _similarity(20.0, 1.7, 12.5, -7.25)
    src = ARCFACE_TEMPLATE_112 + np.array([3.0, -4.0])
    dst = apply_affine(truth, src)
    assert np.abs(estimate_similarity(src, dst) - truth).max() < 1e-6
    noisy = dst + np.random.default_rng(0).normal(0.0, 0.5, dst.shape)
    estimate = estimate_similarity(src, noisy)
    assert np.abs(estimate[:, :2] - truth[:, :2]).max() < 0.05
    assert np.abs(apply_affine(estimate, src) - dst).max() < 1.5
    # a reflected point set gets the best proper similarity, never a reflection
    mirrored = apply_affine(_similarity(20.0, 1.7, 5.0, 5.0, reflect=True), src)
    matrix = estimate_similarity(src, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0
    with pytest.raises(ValueError, match="coincide"):
        estimate_similarity(np.ones((5, 2)), dst)
    with pytest.raises(ValueError):
        estimate_similarity(src, dst[:4])


def test_arcface_template_scales():
    assert np.allclose(arcface_template(112), ARCFACE_TEMPLATE_112)
    assert np.allclose(arcface_template(224), 2 * ARCFACE_TEMPLATE_112)


def test_warp_affine_moves_a_dot_where_the_matrix_says():
    image = np.zeros((80, 100, 3), np.uint8)
    image[30, 60] = (255, 200, 100)
    matrix = _similarity(-35.0, 0.8, 20.0, 40.0)
    out = warp_affine(image, matrix, 96)
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8
    expected = apply_affine(matrix, [[60.0, 30.0]])[0]
    y, x = np.unravel_index(np.argmax(out[..., 0]), out.shape[:2])
    assert abs(x - expected[0]) <= 1 and abs(y - expected[1]) <= 1
    assert out[y, x, 0] > out[y, x, 2] > 0
    # the identity is exact (no half-pixel shift), and greyscale works
    grey = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    same = warp_affine(grey, np.hstack([np.eye(2), np.zeros((2, 1))]), 64)
    assert same.shape == (64, 64) and (same == grey).all()
    shifted = warp_affine(grey, np.array([[1.0, 0.0, 5.0], [0.0, 1.0, 3.0]]), 64)
    assert (shifted[3:, 5:] == grey[:-3, :-5]).all() and (shifted[:3] == 0).all()


# ---------------------------------------------------------------- ArcFace alignment (dlib)

def test_arcface_aligner_on_a_real_face():
    pytest.importorskip("dlib", reason="dlib-bin is not installed (pip install -e '.[faces]')")
    pytest.importorskip("face_recognition_models", reason="face_recognition_models not installed")
    pytest.importorskip("skimage.data", reason="scikit-image (ships the test face photo) is not "
                        "installed")
    from dibigan_tf.data.align import ArcFaceAligner
    from tests.support import astronaut

    aligner = ArcFaceAligner()
    assert aligner.key == "arcface-112-largest-skip-u1" and aligner.size == 112
    photo = astronaut()
    result = aligner.align(photo)
    assert result.status == "ok" and result.num_faces == 1
    assert result.image.shape == (112, 112, 3) and result.image.dtype == np.uint8
    # the aligned face's own landmarks sit on the template
    faces = aligner.detect(result.image)
    assert len(faces) == 1
    points = aligner.landmarks(result.image, faces[0][0])
    assert np.linalg.norm(points[:2] - ARCFACE_TEMPLATE_112[:2], axis=1).max() < 4.0
    assert np.linalg.norm(points - ARCFACE_TEMPLATE_112, axis=1).max() < 8.0
    # no face: the same rules as DlibAligner
    blank = np.full((200, 200, 3), 128, np.uint8)
    assert aligner.align(blank).status == "none" and aligner.align(blank).image is None
    crop = ArcFaceAligner(size=64, none="center_crop")
    assert crop.key == "arcface-64-largest-center_crop-u1-c0.5"
    centred = crop.align(blank)
    assert centred.status == "center_crop" and centred.image.shape == (64, 64, 3)


# ---------------------------------------------------------------- prepared TFDS datasets

def _prepare_fake_tfds(data_dir, name, examples):
    """Writes a real prepared TFDS dataset (records + dataset_info.json) from examples, without
    the builder's download step."""
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow as tf

    builder = tfds.builder(name, data_dir=str(data_dir))
    path = builder.data_dir
    os.makedirs(path)
    split_infos = []
    for split, items in examples.items():
        with tf.io.TFRecordWriter(os.path.join(
                path, f"{name}-{split}.tfrecord-00000-of-00001")) as writer:
            for item in items:
                writer.write(builder.info.features.serialize_example(item))
        split_infos.append(tfds.core.SplitInfo(
            name=split, shard_lengths=[len(items)], num_bytes=0,
            filename_template=tfds.core.ShardedFileTemplate(
                data_dir=path, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
                dataset_name=name, filetype_suffix="tfrecord")))
    builder.info.set_splits(tfds.core.SplitDict(split_infos))
    builder.info.write_to_directory(path)
    return path


def test_tfds_lfw_not_prepared_is_a_quick_error(tmp_path):
    from dibigan_tf.data.tfds_faces import load_tfds_celeb_a, load_tfds_lfw
    with pytest.raises(DataError, match="no such TFDS data directory"):
        load_tfds_lfw(str(tmp_path / "missing"))
    os.makedirs(tmp_path / "tfds" / "lfw" / "0.1.1")   # started, never finished
    with pytest.raises(DataError, match="'lfw' is not prepared .*tfds build lfw"):
        load_tfds_lfw(str(tmp_path / "tfds"))
    with pytest.raises(DataError, match="'celeb_a' is not prepared"):
        load_tfds_celeb_a(str(tmp_path / "tfds"))


def test_tfds_lfw_prepared(tmp_path):
    people = ["Ann_A", "Bob_B", "Ann_A"]
    version_dir = _prepare_fake_tfds(tmp_path / "tfds", "lfw", {"train": [
        {"label": name, "image": np.full((250, 250, 3), 40 * (k + 1), np.uint8)}
        for k, name in enumerate(people)]})
    from dibigan_tf.data.tfds_faces import load_tfds_lfw
    images, names = load_tfds_lfw(str(tmp_path / "tfds"))
    assert images.shape == (3, 250, 250, 3) and images.dtype == np.uint8
    assert names == people and images[:, 5, 5, 0].tolist() == [40, 80, 120]
    assert load_tfds_lfw(str(tmp_path / "tfds"), max_images=2)[1] == people[:2]
    # a version other than this tfds's code is read from its own files
    os.rename(version_dir, os.path.join(os.path.dirname(version_dir), "0.0.9"))
    assert load_tfds_lfw(str(tmp_path / "tfds"))[1] == people


def test_tfds_celeb_a_prepared(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    features = tfds.builder("celeb_a", data_dir=str(tmp_path / "tfds")).info.features
    attribute_names = list(features["attributes"].keys())
    landmark_names = list(features["landmarks"].keys())

    def example(k, identity):
        return {"image": np.full((218, 178, 3), 50 * k, np.uint8),
                "landmarks": {n: k for n in landmark_names},
                "attributes": {n: (i + k) % 2 == 0 for i, n in enumerate(attribute_names)},
                "identity": {"Identity_No": identity}}

    _prepare_fake_tfds(tmp_path / "tfds", "celeb_a",
                       {"train": [example(1, 2880), example(2, 17)],
                        "test": [example(3, 5)]})
    from dibigan_tf.data.tfds_faces import load_tfds_celeb_a
    images, attributes, identities = load_tfds_celeb_a(str(tmp_path / "tfds"), "train")
    assert images.shape == (2, 218, 178, 3) and identities == ["2880", "17"]
    assert attributes[attribute_names[0]].tolist() == [False, True]
    assert load_tfds_celeb_a(str(tmp_path / "tfds"), "test")[2] == ["5"]
    with pytest.raises(DataError, match="no split 'validation'"):
        load_tfds_celeb_a(str(tmp_path / "tfds"), "validation")
