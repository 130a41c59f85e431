"""Faces from TensorFlow Datasets builds that are already prepared on this machine.

For people who have run `tfds build lfw` / `tfds build celeb_a` (or `tfds.load`) before: the
prepared files under `<data_dir>/<name>/<version>/` are read as numpy arrays. Nothing is ever
downloaded or prepared here (no `download_and_prepare`, no network): a dataset that is not
prepared under `data_dir` is a DataError saying how to prepare it.

The images are TFDS's, not aligned by us: LFW's are the 250x250 originals, CelebA's are CelebA's
own 218x178 crops (`img_align_celeba`). Align them (`DlibAligner`, `ArcFaceAligner`) before a
matcher sees them: `load_tfds_faces` does, with the identity folders' aligned-crop cache, and is
what `--dataset=tfds` trains on.
"""
from __future__ import annotations

import hashlib
import io
import os
import time

import numpy as np

from dibigan_tf.data.base import DataError
from dibigan_tf.data.faces import (AlignedCache, align_one, faces_from_cache, open_image,
                                  to_rgb)


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


def _examples(builder, split: str, max_images: int = 0, decoders=None):
    """The split's examples as numpy, in the build's own order (files read in order, never
    shuffled: the same order on every read of the same build)."""
    import tensorflow_datasets as tfds

    if split not in builder.info.splits:
        raise DataError(f"{builder.name}: no split {split!r} (has "
                        f"{', '.join(sorted(builder.info.splits))})")
    dataset = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
    if max_images:
        dataset = dataset.take(int(max_images))
    return tfds.as_numpy(dataset)


def _read_split(builder, split: str, max_images: int):
    return list(_examples(builder, split, max_images))


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



#: the builds `load_tfds_faces` reads: each has an identity per example
TFDS_FACE_DATASETS = ("lfw", "celeb_a")


def _identity_reader(builder):
    """A function giving an example's identity name: lfw's label (LFW's folder name), celeb_a's
    identity number. A celeb_a build without identities is a one-line DataError (person splits
    cannot be made from it)."""
    if builder.name == "lfw":
        return lambda example: _text(example["label"])
    if "identity" not in builder.info.features:
        raise DataError(f"{builder.data_dir}: this TFDS celeb_a ({builder.info.version}) has no "
                        f"identity labels (TFDS adds them from 2.1.0), and the people cannot be "
                        f"split without them; use --dataset=celeba --data_dir=<CelebA root with "
                        f"identity_CelebA.txt and the photos> instead")
    return lambda example: str(int(example["identity"]["Identity_No"]))


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _content_key(encoded: bytes) -> str:
    return "tfds-sha1:" + hashlib.sha1(encoded).hexdigest()


def load_tfds_faces(name: str, data_dir: str, aligner, cache_dir: str, split: str = "train",
                    max_images: int = 0, chunk_size: int = 500, progress=None):
    """Aligned faces of a prepared TFDS `lfw` or `celeb_a` split, as `load_face_folders` gives
    those of an identity folder: (FaceSet, stats) with the same statistics, the same aligned-crop
    cache and the same rules (an undecodable image counted as "unreadable", a photo without a
    face as "none", both dropped, never relabelled).

    Identities: lfw's label (the LFW folder name); celeb_a's identity number, which only builds
    from 2.1.0 have: an older build is a DataError pointing to --dataset=celeba.

    Cache key: a TFDS example has no file, so no path, size and modification time; it is keyed
    by the SHA-1 of its stored (encoded) image bytes, `tfds-sha1:<hex>`. The crop depends on
    those bytes and the aligner alone (the cache folder is per aligner), so the key stays
    correct whatever the order, version, split or data_dir the example is read from: another
    build of the same photos aligns nothing again, a changed image is aligned anew, and nothing
    is ever served for the wrong photo (a position key would be, if the data_dir were prepared
    again in another order). The bytes are hashed without decoding, so a load whose crops are
    all cached decodes no image.

    FaceSet.paths: `<identity>/<name>-<version>-<split>-<index>` (index: position in the
    build's unshuffled order), recorded in a run's split.json; the identity is the second-last
    part, as in a folder's `<identity>/<file>`. TFDS keeps no LFW file numbers, so an LFW pairs
    file cannot name these images.

    max_images > 0 reads only the first examples (celeb_a's train split is about 19 GB as
    uint8). A photo is decoded only when its crop is not cached, one at a time: memory holds the
    crops, never the decoded photos."""
    import tensorflow_datasets as tfds

    if name not in TFDS_FACE_DATASETS:
        raise DataError(f"TFDS dataset {name!r}: faces are read from "
                        f"{' or '.join(TFDS_FACE_DATASETS)} only")
    builder = _builder(name, data_dir)
    identity_of = _identity_reader(builder)
    version = str(builder.info.version)
    source = f"{builder.data_dir} ({split})"
    skip = {"image": tfds.decode.SkipDecoding()}   # the stored bytes: hashed, decoded on demand
    ids, names, keys = [], [], []
    for index, example in enumerate(_examples(builder, split, max_images, skip)):
        identity = identity_of(example)
        names.append(identity)
        ids.append(f"{identity}/{name}-{version}-{split}-{index:06d}")
        keys.append(_content_key(example["image"]))
    if not ids:
        raise DataError(f"{source}: holds no images")
    cache = AlignedCache(cache_dir, aligner.key)
    todo = [i for i, k in enumerate(keys) if k not in cache.entries]
    start = time.time()
    if todo:
        wanted, done = set(todo), 0
        chunk_keys, status, images = [], [], []
        for index, example in enumerate(_examples(builder, split, todo[-1] + 1, skip)):
            if index not in wanted:
                continue
            encoded = example["image"]
            if _content_key(encoded) != keys[index]:
                raise DataError(f"{source}: example {index} changed while it was read; read it "
                                f"again once the dataset is no longer being prepared")
            state, crop = align_one(aligner, lambda: to_rgb(open_image(io.BytesIO(encoded),
                                                                       ids[index])))
            status.append(state)
            images.append(crop)
            chunk_keys.append(keys[index])
            if len(chunk_keys) == chunk_size or done + len(chunk_keys) == len(todo):
                cache.add(chunk_keys, status, images, aligner.size)
                done += len(chunk_keys)
                chunk_keys, status, images = [], [], []
                if progress:
                    progress(done, len(todo), time.time() - start)
        if done != len(todo):
            raise DataError(f"{source}: gave {done} of the {len(todo)} images to align on a "
                            f"second read")
    return faces_from_cache(ids, names, keys, cache, source, aligned_this_pass=len(todo),
                            empty_identity_folders=0, listed_missing=0,
                            tfds=f"{name} {version} {split}")
