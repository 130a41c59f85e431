"""`--dataset=tfds`: a prepared TensorFlow Datasets build (written offline by the test, never
downloaded) trains as an identity folder does: dlib-aligned into the aligned-crop cache, its
people split by `heldout_fraction`, the cache keys stable across loads and data_dirs; a celeb_a
build without identities is a one-line error."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from dibigan_tf.config import RunConfig
from dibigan_tf.data.base import DataError
from dibigan_tf.training import datasets
from dibigan_tf.training.common import TrainingError
from tests.data.test_loaders import _prepare_fake_tfds
from tests.support import astronaut

PEOPLE = ["Ann_A", "Bob_B", "Cid_C", "Dee_D"]


def _lfw_photos():
    """(images [n, 250, 250, 3], names): three crops of the real face photo per person (shifted,
    scaled, every other one mirrored, tinted per person), people interleaved as TFDS's order
    mixes them, and one black image (no face) of Bob_B."""
    photo = astronaut()
    rng = np.random.default_rng(0)
    tints = {name: rng.uniform(0.7, 1.2, 3) for name in PEOPLE}
    images, names = [], []
    for k in range(3):
        for name in PEOPLE:
            side, top, left = int(rng.integers(280, 350)), int(rng.integers(0, 30)), int(
                rng.integers(60, 130))
            crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((250, 250))
            image = np.clip(np.asarray(crop, np.float64) * tints[name], 0, 255).astype(np.uint8)
            images.append(image[:, ::-1] if (k + len(name)) % 2 else image)
            names.append(name)
    images.append(np.zeros((250, 250, 3), np.uint8))
    names.append("Bob_B")
    return images, names


def _cfg(tmp_path, **kwargs):
    values = dict(dataset="tfds", data_dir=str(tmp_path / "tfds"), tfds_name="lfw",
                  checkpoint_dir=str(tmp_path / "ckpt"), align_template="dlib", align_size=32,
                  heldout_fraction=0.25, seed=0)
    values.update(kwargs)
    return RunConfig(**values)


def _run_dir(tmp_path, name="run"):
    path = tmp_path / "ckpt" / name
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def test_tfds_lfw_is_aligned_cached_and_split_by_person(tmp_path):
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    images, names = _lfw_photos()
    _prepare_fake_tfds(tmp_path / "tfds", "lfw", {"train": [
        {"label": name, "image": image} for name, image in zip(names, images)]})
    cfg = _cfg(tmp_path)

    faces, stats = datasets.load_faces(cfg)
    assert stats["images"] == 13 and stats["aligned_this_pass"] == 13
    assert stats["aligned"] == 12 and stats["status_none"] == 1
    assert stats["examples"]["none"] == "Bob_B/lfw-0.1.1-train-000012"
    assert faces.class_names == PEOPLE and faces.images.shape == (12, 32, 32, 3)
    # each crop keeps its example's identity, and is dlib's crop of that very photo
    from dibigan_tf.data.align import make_aligner
    aligner = make_aligner("dlib", 32)
    for i, path in enumerate(faces.paths):
        index = int(path.rsplit("-", 1)[1])
        assert path == f"{names[index]}/lfw-0.1.1-train-{index:06d}"
        assert faces.class_names[faces.labels[i]] == names[index]
        np.testing.assert_array_equal(faces.images[i], aligner.align(images[index]).image)
    assert len(os.listdir(stats["cache"])) >= 2   # a shard and stats.json

    # the pipeline's split: whole people held out, recorded by example id
    run = _run_dir(tmp_path)
    train, heldout = datasets.load_dataset(cfg, run)
    assert len(train) + len(heldout) == 12
    assert len(heldout.class_names) == 1
    assert not set(train.class_names) & set(heldout.class_names)
    assert sorted(train.class_names + heldout.class_names) == PEOPLE
    for part in (train, heldout):
        assert [p.split("/")[0] for p in part.paths] == [part.class_names[k] for k in part.labels]
    with open(os.path.join(run, "split.json")) as handle:
        split = json.load(handle)
    assert split == {"train": train.paths, "heldout": heldout.paths}

    # a second load aligns nothing and gives the same split; so does a copy of the build
    # elsewhere (the key is the stored image, not where or in which order it was read)
    again, stats = datasets.load_faces(cfg)
    assert stats["aligned_this_pass"] == 0 and again.paths == faces.paths
    np.testing.assert_array_equal(again.images, faces.images)
    train2, _ = datasets.load_dataset(cfg, run)
    assert train2.paths == train.paths
    shutil.copytree(tmp_path / "tfds", tmp_path / "elsewhere")
    moved, stats = datasets.load_faces(_cfg(tmp_path, data_dir=str(tmp_path / "elsewhere")))
    assert stats["aligned_this_pass"] == 0 and moved.paths == faces.paths

    # max_train_images reads only the first examples
    part, stats = datasets.load_faces(_cfg(tmp_path, max_train_images=6))
    assert stats["images"] == 6 and stats["aligned_this_pass"] == 0
    assert part.paths == faces.paths[:6]


def _celeb_a_example(features, k, identity):
    return {"image": np.full((218, 178, 3), 30 * k, np.uint8),
            "landmarks": {n: k for n in features["landmarks"].keys()},
            "attributes": {n: bool(k % 2) for n in features["attributes"].keys()},
            "identity": {"Identity_No": identity}}


def test_tfds_celeb_a_identities_are_the_people(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    features = tfds.builder("celeb_a", data_dir=str(tmp_path / "tfds")).info.features
    identities = [2880, 17, 5, 2880, 17, 5]
    _prepare_fake_tfds(tmp_path / "tfds", "celeb_a", {"train": [
        _celeb_a_example(features, k + 1, i) for k, i in enumerate(identities)]})
    cfg = _cfg(tmp_path, tfds_name="celeb_a", align_template="none", align_size=16,
               heldout_fraction=0.34)
    train, heldout = datasets.load_dataset(cfg, _run_dir(tmp_path))
    assert sorted(train.class_names + heldout.class_names) == ["17", "2880", "5"]
    assert len(heldout.class_names) == 1 and len(heldout) == 2 and len(train) == 4
    assert train.images.shape[1:] == (16, 16, 3)


def test_tfds_celeb_a_without_identities_is_a_one_line_error(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    features = tfds.builder("celeb_a", data_dir=str(tmp_path / "tfds")).info.features
    path = _prepare_fake_tfds(tmp_path / "tfds", "celeb_a", {"train": [
        _celeb_a_example(features, k, k) for k in (1, 2)]})
    # an older build (TFDS added the identity feature in 2.1.0): no identity in its features
    with open(os.path.join(path, "features.json")) as handle:
        described = json.load(handle)
    del described["featuresDict"]["features"]["identity"]
    with open(os.path.join(path, "features.json"), "w") as handle:
        json.dump(described, handle)
    with open(os.path.join(path, "dataset_info.json")) as handle:
        info = json.load(handle)
    info["version"] = "2.0.1"
    with open(os.path.join(path, "dataset_info.json"), "w") as handle:
        json.dump(info, handle)
    os.rename(path, os.path.join(os.path.dirname(path), "2.0.1"))
    cfg = _cfg(tmp_path, tfds_name="celeb_a", align_template="none", align_size=16)
    with pytest.raises(DataError) as error:
        datasets.load_dataset(cfg, _run_dir(tmp_path))
    message = str(error.value)
    assert "\n" not in message and "no identity labels" in message
    assert "--dataset=celeba" in message and "identity_CelebA.txt" in message
    assert not os.path.exists(os.path.join(cfg.checkpoint_dir, "aligned", "resize-16",
                                           "shard-00000.npz"))   # refused before aligning


def test_tfds_refuses_lfw_file_numbers_and_a_missing_build(tmp_path):
    with pytest.raises(TrainingError, match="--pairs names LFW's images by their file numbers"):
        datasets.load_faces(_cfg(tmp_path, pairs="pairs.txt"))
    with pytest.raises(TrainingError, match="--people names"):
        datasets.load_faces(_cfg(tmp_path, people="people.txt"))
    with pytest.raises(TrainingError, match="needs --data_dir .*tfds: the TFDS data_dir"):
        datasets.load_faces(_cfg(tmp_path, data_dir=""))
    (tmp_path / "tfds").mkdir()
    with pytest.raises(DataError, match="'lfw' is not prepared .*tfds build lfw"):
        datasets.load_faces(_cfg(tmp_path, align_template="none"))
