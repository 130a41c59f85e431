"""Identity folders, image decoding of awkward files, person splits, LFW pairs and the aligned
cache (with a stand-in aligner, so these tests need no dlib)."""
import glob
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from dibigan_tf.data.base import DataError
from dibigan_tf.data.faces import (load_face_folders, read_lfw_pairs, read_lfw_people,
                                   read_rgb, resize_images, scan_identity_folders,
                                   split_identities)
from tests.support import MeanAligner





def _save(path, array, mode=None, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array, mode)
    image.save(path, **kwargs)


def _folder(tmp_path):
    root = tmp_path / "faces"
    # identity k: images of colour (10k, 20k, 30k)
    for k, name in enumerate(["alice", "bob", "carol"]):
        for i in range(3):
            _save(str(root / name / f"{name}_{i + 1:04d}.jpg"),
                  np.full((20, 20, 3), (10 * (k + 1), 20 * (k + 1), 30 * (k + 1)), np.uint8),
                  quality=100)
    os.makedirs(root / "empty_person")
    return root


def test_scan_identity_folders_and_empty_folder(tmp_path):
    root = _folder(tmp_path)
    (root / "notes.txt").write_text("not an identity")
    paths, names, empty = scan_identity_folders(str(root))
    assert len(paths) == 9 and names.count("bob") == 3
    assert empty == ["empty_person"]
    assert paths[0] == os.path.join("alice", "alice_0001.jpg")
    with pytest.raises(DataError, match="no such directory"):
        scan_identity_folders(str(tmp_path / "missing"))
    os.makedirs(tmp_path / "nothing" / "x")
    with pytest.raises(DataError, match="no images"):
        scan_identity_folders(str(tmp_path / "nothing"))


def test_lfw_images_subfolder_is_found(tmp_path):
    _save(str(tmp_path / "lfw" / "images" / "A_B" / "A_B_0001.jpg"), np.ones((8, 8, 3), np.uint8))
    paths, names, _ = scan_identity_folders(str(tmp_path / "lfw"))
    assert paths == [os.path.join("images", "A_B", "A_B_0001.jpg")] and names == ["A_B"]


def test_read_rgb_awkward_modes(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    _save(str(tmp_path / "grey.png"), grey)
    out = read_rgb(str(tmp_path / "grey.png"))
    assert out.shape == (8, 8, 3) and (out[..., 0] == grey).all() and (out[..., 2] == grey).all()

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128   # half transparent red on black -> about 100
    _save(str(tmp_path / "alpha.png"), rgba)
    out = read_rgb(str(tmp_path / "alpha.png"))
    assert out.shape == (4, 4, 3) and abs(int(out[0, 0, 0]) - 100) <= 2 and out[0, 0, 1] == 0

    deep = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000)
    Image.fromarray(deep).save(str(tmp_path / "deep.png"))
    out = read_rgb(str(tmp_path / "deep.png"))
    assert out.dtype == np.uint8 and out[3, 3, 0] == round(60000 / 65535 * 255)

    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))   # red in CMYK
    cmyk.save(str(tmp_path / "cmyk.jpg"), quality=100)
    out = read_rgb(str(tmp_path / "cmyk.jpg"))
    assert out.shape == (4, 4, 3) and out[0, 0, 0] > 200 and out[0, 0, 1] < 50


def test_read_rgb_refuses_broken_files(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="unreadable"):
        read_rgb(str(tmp_path / "junk.jpg"))
    _save(str(tmp_path / "full.jpg"), np.full((64, 64, 3), 90, np.uint8))
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 3])
    with pytest.raises(DataError, match="unreadable"):
        read_rgb(str(tmp_path / "cut.jpg"))


def _png_bomb(path, width=100_000, height=100_000):
    """A PNG of a few hundred bytes that declares width x height grey pixels (10 GB decoded by
    default): the header, a short compressed stream of zero rows, the end chunk."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * 4096, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) +
                     chunk(b"IEND", b""))


def test_read_rgb_refuses_a_png_bomb_before_decoding(tmp_path):
    import time
    path = tmp_path / "bomb.png"
    _png_bomb(path)
    assert path.stat().st_size < 1000
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        read_rgb(str(path))
    assert time.monotonic() - start < 2.0
    message = str(info.value)
    assert str(path) in message and "too large" in message and "100000x100000" in message
    assert "\n" not in message


def test_read_rgb_pixel_limit(tmp_path, monkeypatch):
    import dibigan_tf.data.faces as faces
    monkeypatch.setattr(faces, "MAX_PIXELS", 100 * 100)
    monkeypatch.setattr(faces, "MAX_JPEG_PIXELS", 64 * 100 * 100)
    # a PNG over the limit is refused (its decoder cannot scale while decoding)
    _save(str(tmp_path / "big.png"), np.full((400, 300, 3), 7, np.uint8))
    with pytest.raises(DataError, match=r"big.png: image too large \(300x400 pixels"):
        read_rgb(str(tmp_path / "big.png"))
    # a JPEG is decoded at a reduced scale, within the limit
    _save(str(tmp_path / "big.jpg"), np.full((400, 300, 3), 7, np.uint8), quality=95)
    out = read_rgb(str(tmp_path / "big.jpg"))
    assert out.shape[0] * out.shape[1] <= 100 * 100 and out.shape[0] > out.shape[1]
    assert np.abs(out.astype(int) - 7).max() <= 2
    # ...unless even 1/8 of it is over the limit
    _save(str(tmp_path / "huge.jpg"), np.full((1000, 900, 3), 7, np.uint8))
    with pytest.raises(DataError, match="huge.jpg: image too large.*1/8"):
        read_rgb(str(tmp_path / "huge.jpg"))


def test_a_png_bomb_in_a_folder_is_skipped_and_the_run_goes_on(tmp_path):
    root = _folder(tmp_path)
    _png_bomb(root / "bob" / "bob_0004.png")
    faces, stats = load_face_folders(str(root), MeanAligner(), str(tmp_path / "cache"))
    assert stats["aligned"] == 9 and stats["status_unreadable"] == 1
    assert stats["examples"]["unreadable"] == os.path.join("bob", "bob_0004.png")


def test_the_detector_never_sees_more_than_its_pixel_limit(monkeypatch):
    """A large photo is detected on a scaled-down copy (boxes scaled back to the photo), and an
    upsampling level that would pass the limit does not run (no dlib needed: a fake detector)."""
    import dibigan_tf.data.align as align
    monkeypatch.setattr(align, "MAX_DETECT_PIXELS", 100 * 100)

    class Rect:
        def __init__(self, left, top, right, bottom):
            self.box = (left, top, right, bottom)

        def left(self):
            return self.box[0]

        def top(self):
            return self.box[1]

        def right(self):
            return self.box[2]

        def bottom(self):
            return self.box[3]

    class Detector:
        def __init__(self, found):
            self.found, self.calls = found, []

        def run(self, image, level, threshold):
            self.calls.append((image.shape[:2], level))
            return ([Rect(10, 10, 20, 20)], [1.0], [0]) if self.found else ([], [], [])

    class FakeDlib:
        rectangle = Rect

    aligner = object.__new__(align.DlibAligner)
    aligner._dlib, aligner.upsample = FakeDlib(), 2
    aligner._detector = Detector(found=True)
    faces = aligner.detect(np.zeros((400, 400, 3), np.uint8))
    assert aligner._detector.calls == [((100, 100), 0)]
    assert faces[0][0].box == (40, 40, 80, 80)
    aligner._detector = Detector(found=False)
    aligner.detect(np.zeros((40, 40, 3), np.uint8))   # 1,600 px; x4 = 6,400; x16 over the limit
    assert aligner._detector.calls == [((40, 40), 0), ((40, 40), 1)]


def test_load_face_folders_counts_bad_images_and_keeps_identities(tmp_path):
    root = _folder(tmp_path)
    (root / "bob" / "bob_0009.jpg").write_bytes(b"broken")
    _save(str(root / "carol" / "carol_0010.png"), np.zeros((20, 20, 3), np.uint8))  # no face
    aligner = MeanAligner()
    faces, stats = load_face_folders(str(root), aligner, str(tmp_path / "cache"))
    assert stats["images"] == 11 and stats["aligned"] == 9
    assert stats["status_unreadable"] == 1 and stats["status_none"] == 1
    assert stats["examples"]["unreadable"] == os.path.join("bob", "bob_0009.jpg")
    assert stats["empty_identity_folders"] == 1
    assert faces.class_names == ["alice", "bob", "carol"]
    # every crop carries its own identity's colour: no image was given another label
    for image, label, path in zip(faces.images, faces.labels, faces.paths):
        k = label + 1
        assert path.startswith(faces.class_names[label])
        assert np.allclose(image[0, 0], (10 * k, 20 * k, 30 * k), atol=2)
    # a second load aligns nothing; a changed file is aligned again
    again = MeanAligner()
    faces2, _ = load_face_folders(str(root), again, str(tmp_path / "cache"))
    assert again.calls == 0 and (faces2.images == faces.images).all()
    _save(str(root / "alice" / "alice_0001.jpg"), np.full((20, 20, 3), 250, np.uint8))
    os.utime(root / "alice" / "alice_0001.jpg", ns=(1, 1))
    third = MeanAligner()
    load_face_folders(str(root), third, str(tmp_path / "cache"))
    assert third.calls == 1


def _distinct_folder(tmp_path, people=("alice", "bob"), photos=3):
    """Every photo its own colour (no two files with the same bytes, so none is found in the
    cache by another's content)."""
    root = tmp_path / "distinct"
    for k, name in enumerate(people):
        for i in range(photos):
            _save(str(root / name / f"{name}_{i + 1:04d}.png"),
                  np.full((20, 20, 3), (40 * k + 10 * i + 5, 60, 90), np.uint8))
    return root


def test_a_copied_folder_is_found_by_content_and_not_aligned_again(tmp_path):
    # every photo its own colour, so a crop handed to the wrong file would show
    root = _distinct_folder(tmp_path)
    (root / "bob" / "bob_0009.jpg").write_bytes(b"broken")
    cache = str(tmp_path / "cache")
    first = MeanAligner()
    faces, stats = load_face_folders(str(root), first, cache)
    assert first.calls == 6 and stats["found_by_content"] == 0
    # a copy with new file times (cp without -p, a restored backup): the same bytes
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    for path in copy.rglob("*.*"):
        os.utime(path, ns=(10 ** 18, 10 ** 18))
    second = MeanAligner()
    moved, stats = load_face_folders(str(copy), second, cache)
    assert second.calls == 0 and stats["aligned_this_pass"] == 0
    assert stats["found_by_content"] == 7 and stats["status_unreadable"] == 1
    assert moved.paths == faces.paths and (moved.labels == faces.labels).all()
    assert (moved.images == faces.images).all()
    # their new keys were recorded: the next run finds them by key, reading no file
    third = MeanAligner()
    _, stats = load_face_folders(str(copy), third, cache)
    assert third.calls == 0 and stats["found_by_content"] == 0
    # shards written without digests still serve their own keys; a copy is then aligned again
    for shard in glob.glob(os.path.join(cache, MeanAligner.key, "shard-*.npz")):
        with np.load(shard) as data:
            arrays = {k: data[k] for k in data.files if k != "digests"}
        np.savez(shard, **arrays)
    for alias in glob.glob(os.path.join(cache, MeanAligner.key, "alias-*.npz")):
        os.remove(alias)
    fourth = MeanAligner()
    load_face_folders(str(root), fourth, cache)
    assert fourth.calls == 0
    fifth = MeanAligner()
    _, stats = load_face_folders(str(copy), fifth, cache)
    assert fifth.calls == 6 and stats["found_by_content"] == 0


def test_load_face_folders_resumes_after_interruption(tmp_path):
    root = _distinct_folder(tmp_path, people=("alice", "bob", "carol"))

    class Crash(MeanAligner):
        def align(self, image):
            if self.calls == 5:
                raise KeyboardInterrupt
            return super().align(image)

    with pytest.raises(KeyboardInterrupt):
        load_face_folders(str(root), Crash(), str(tmp_path / "cache"), chunk_size=2)
    resumed = MeanAligner()
    faces, _ = load_face_folders(str(root), resumed, str(tmp_path / "cache"), chunk_size=2)
    assert resumed.calls == 9 - 4 and len(faces) == 9   # two chunks of 2 were stored


def test_no_aligned_face_is_a_clear_error(tmp_path):
    _save(str(tmp_path / "r" / "x" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="none of 1 images"):
        load_face_folders(str(tmp_path / "r"), MeanAligner(), str(tmp_path / "c"))


def test_split_identities_is_by_person_and_seeded():
    labels = np.repeat(np.arange(40), 3)
    train, held = split_identities(labels, 0.25, seed=0)
    assert len(np.unique(labels[held])) == 10
    assert not set(labels[train]) & set(labels[held])
    assert len(train) + len(held) == len(labels)
    train2, held2 = split_identities(labels, 0.25, seed=0)
    assert (held == held2).all()
    _, held3 = split_identities(labels, 0.25, seed=1)
    assert set(labels[held3]) != set(labels[held])
    with pytest.raises(DataError):
        split_identities(labels, 1.0, seed=0)


def test_read_lfw_pairs(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("3\nA_B\t1\t2\nC\t1\tD_E\t3\n\nF 2 4\n")
    assert read_lfw_pairs(str(path)) == [("A_B", 1, "A_B", 2, True), ("C", 1, "D_E", 3, False),
                                         ("F", 2, "F", 4, True)]
    path.write_text("10 300\nA 1 2\n")   # the View 2 header: folds and pairs per fold
    assert len(read_lfw_pairs(str(path))) == 1
    path.write_text("1\nA one 2\n")
    with pytest.raises(DataError, match=":2:"):
        read_lfw_pairs(str(path))


def test_resize_images():
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    assert resize_images(images, 4) is images
    small = resize_images(images, 2)
    assert small.shape == (2, 2, 2, 3)
    assert small[0, 0, 0, 0] == round(images[0, :2, :2, 0].mean())


def test_resize_images_greyscale():
    """One-channel images (the digits) resize to any size, up or down."""
    images = np.arange(2 * 32 * 32, dtype=np.uint8).reshape(2, 32, 32, 1)
    for size in (16, 48):
        out = resize_images(images, size)
        assert out.shape == (2, size, size, 1) and out.dtype == np.uint8
    assert abs(int(resize_images(images, 16)[1, 0, 0, 0]) - images[1, :2, :2, 0].mean()) <= 0.5


def test_read_lfw_people_lists_every_image(tmp_path):
    (tmp_path / "images").mkdir()
    path = tmp_path / "people.txt"
    path.write_text("2\nA_B\t2\nC\t1\n")
    paths, names = read_lfw_people(str(path), str(tmp_path))
    assert paths == [os.path.join("images", "A_B", "A_B_0001.jpg"),
                     os.path.join("images", "A_B", "A_B_0002.jpg"),
                     os.path.join("images", "C", "C_0001.jpg")]
    assert names == ["A_B", "A_B", "C"]
    path.write_text("1\nA_B two\n")
    with pytest.raises(DataError, match=":2:"):
        read_lfw_people(str(path))
