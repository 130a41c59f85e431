"""Faces from TensorFlow Datasets builds that are already prepared on this machine.

For people who have run `tfds build lfw` / `tfds build celeb_a` (or `tfds.load`) before: the
prepared files under `<data_dir>/<name>/<version>/` are read as numpy arrays. Nothing is ever
downloaded or prepared here (no `download_and_prepare`, no network): a dataset that is not
prepared under `data_dir` is a DataError saying how to prepare it.

The images are TFDS's, not aligned by us: LFW's are the 250x250 originals, CelebA's are CelebA's
own 218x178 crops (`img_align_celeba`). Align them (`DlibAligner`, `ArcFaceAligner`) before a
matcher sees them.
"""
from __future__ import annotations

import os

import numpy as np

from dibigan_tf.data.base import DataError


def _prepared_version(name: str, data_dir: str, code_version: str | None = None) -> str:
    """The prepared version directory of `name` under data_dir (the code's version if it is
    prepared, else the newest prepared); DataError when none is."""
    base = os.path.join(data_dir, name)
    hint = (f"prepare it once with `tfds build {name} --data_dir={data_dir}` (this downloads) "
            f"or pass the data_dir that holds it")
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: no such TFDS data directory; {hint}")
    versions = []
    if os.path.isdir(base):
        for entry in os.listdir(base):
            if os.path.isfile(os.path.join(base, entry, "dataset_info.json")):
                versions.append(entry)
    if not versions:
        raise DataError(f"TFDS dataset {name!r} is not prepared under {data_dir} (no "
                        f"{name}/<version>/dataset_info.json); {hint}")
    if code_version in versions:
        return code_version

    def order(version):
        try:
            return tuple(int(p) for p in version.split("."))
        except ValueError:
            return (-1,)
    return max(versions, key=order)


def _builder(name: str, data_dir: str):
    import tensorflow_datasets as tfds

    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    try:
        code_version = str(tfds.builder_cls(name).VERSION)
    except Exception:  # an unknown name in this tfds: read whatever was prepared
        code_version = None
    version = _prepared_version(name, data_dir, code_version)
    path = os.path.join(data_dir, name, version)
    try:
        if version == code_version:
            builder = tfds.builder(name, data_dir=data_dir)
        else:   # another version than this tfds's code: read it from its own files only
            builder = tfds.builder_from_directory(path)
    except Exception as error:
        raise DataError(f"{path}: cannot open the prepared TFDS dataset "
                        f"({type(error).__name__}: {error})") from None
    if not builder.is_prepared():
        raise DataError(f"{path}: the TFDS dataset {name!r} is not completely prepared")
    return builder


def _read_split(builder, split: str, max_images: int):
    import tensorflow_datasets as tfds

    if split not in builder.info.splits:
        raise DataError(f"{builder.name}: no split {split!r} (has "
                        f"{', '.join(sorted(builder.info.splits))})")
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    if max_images:
        dataset = dataset.take(int(max_images))
    return list(tfds.as_numpy(dataset))


def load_tfds_lfw(data_dir: str, max_images: int = 0):
    """(images uint8 [n, 250, 250, 3], identity names [n]) of a prepared TFDS `lfw`.

    The names are LFW's folder names ("George_W_Bush"), so `split_identities` and LFW's pairs
    files (`read_lfw_pairs`) apply. max_images > 0 reads only the first examples."""
    builder = _builder("lfw", data_dir)
    examples = _read_split(builder, "train", max_images)
    if not examples:
        raise DataError(f"{builder.data_dir}: the prepared lfw holds no images")
    images = np.stack([example["image"] for example in examples]).astype(np.uint8)
    names = [example["label"].decode("utf-8") if isinstance(example["label"], bytes)
             else str(example["label"]) for example in examples]
    return images, names


def load_tfds_celeb_a(data_dir: str, split: str = "train", max_images: int = 0):
    """(images uint8 [n, 218, 178, 3], attributes {name: bool [n]}, identity names or None) of a
    prepared TFDS `celeb_a` split ("train", "validation", "test").

    TFDS builds before version 2.1.0 have no identity feature, and then the identity names are
    None: identity-based (person) splits need CelebA's `identity_CelebA.txt`
    (`dibigan_tf.data.celeba.read_celeba_identities`). CelebA's own splits are *not* by person.
    The whole train split is about 19 GB as uint8: pass max_images to read a part."""
    builder = _builder("celeb_a", data_dir)
    examples = _read_split(builder, split, max_images)
    if not examples:
        raise DataError(f"{builder.data_dir}: celeb_a split {split!r} holds no images")
    images = np.stack([example["image"] for example in examples]).astype(np.uint8)
    attributes = {key: np.array([bool(example["attributes"][key]) for example in examples])
                  for key in sorted(examples[0].get("attributes", {}))}
    identities = None
    if "identity" in examples[0]:
        identities = [str(int(example["identity"]["Identity_No"])) for example in examples]
    return images, attributes, identities

