"""CelebA's identity list (`identity_CelebA.txt`: `<file> <identity number>` per line) as records
for `load_face_folders`, so that CelebA photos are aligned, cached and split by person like the
identity-folder datasets:

    identity_file, image_dir = find_celeba(root)
    faces, stats = load_face_folders(image_dir, aligner, cache_dir,
                                     records=read_celeba_identities(identity_file, image_dir))

The images live in one folder: `img_celeba` (the in-the-wild photos), `img_align_celeba` (CelebA's
own crops) or `images` (our samples). No image is ever given a wrong identity: a file listed twice
with two identities is a DataError, and listed files missing on disk are counted and skipped by
`load_face_folders` (`stats["listed_missing"]`).
"""
from __future__ import annotations

import os

from absl import logging

from dibigan_tf.data.base import DataError

IDENTITY_FILE_NAMES = ("identity_CelebA.txt", "identity.txt")
IMAGE_DIR_NAMES = ("img_celeba", "img_align_celeba", "images")
#: the official release keeps the identity list under Anno/ and the image folders under Img/
_ANNOTATION_DIRS = ("", "Anno")
_IMAGE_PARENT_DIRS = ("", "Img")


def read_celeba_identities(identity_file: str, image_dir: str):
    """(relative paths, identity names) of a CelebA identity file; paths are relative to
    image_dir, names are the identity numbers as strings ("7399"). Blank lines are skipped; a
    malformed line, an unsafe file name or a file listed with two identities is a DataError with
    the line number."""
    if not os.path.isdir(image_dir):
        raise DataError(f"{image_dir}: no such image directory")
    try:
        with open(identity_file, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise DataError(f"{identity_file}: cannot read the identity file ({error})") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{identity_file}: not a text identity file ({error})") from None
    identity_of, line_of, paths = {}, {}, []
    duplicates = 0
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{identity_file}:{number}"
        if len(parts) != 2:
            raise DataError(f"{where}: expected '<file> <identity number>', got {len(parts)} "
                            f"fields: {line!r}")
        name, identity = parts
        try:
            identity = str(int(identity))
        except ValueError:
            raise DataError(f"{where}: identity {identity!r} is not an integer: {line!r}") from None
        rel = os.path.normpath(name)
        if os.path.isabs(name) or rel == ".." or rel.startswith(".." + os.sep):
            raise DataError(f"{where}: file name {name!r} points outside the image directory")
        if rel in identity_of:
            if identity_of[rel] != identity:
                raise DataError(f"{where}: {name} is listed with identity {identity} but line "
                                f"{line_of[rel]} gives it identity {identity_of[rel]}")
            duplicates += 1
            continue
        identity_of[rel], line_of[rel] = identity, number
        paths.append(rel)
    if not paths:
        raise DataError(f"{identity_file}: lists no images")
    if duplicates:
        logging.warning("%s: %d repeated lines (same file, same identity) ignored",
                        identity_file, duplicates)
    return paths, [identity_of[p] for p in paths]


def find_celeba(root: str, image_dir_name: str | None = None):
    """(identity file, image directory) under a CelebA root.

    Looks for `identity_CelebA.txt` or `identity.txt` in root or root/Anno, and for an image
    folder `img_celeba`, `img_align_celeba` or `images` (first found, in that order, unless
    image_dir_name names one) in root or root/Img."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such directory (expected a CelebA root with "
                        f"{' or '.join(IDENTITY_FILE_NAMES)} and one of {IMAGE_DIR_NAMES})")
    identity_file = next((os.path.join(root, sub, name) for sub in _ANNOTATION_DIRS
                          for name in IDENTITY_FILE_NAMES
                          if os.path.isfile(os.path.join(root, sub, name))), None)
    if identity_file is None:
        raise DataError(f"{root}: no identity file ({' or '.join(IDENTITY_FILE_NAMES)}, in the "
                        f"root or Anno/)")
    names = (image_dir_name,) if image_dir_name else IMAGE_DIR_NAMES
    image_dir = next((os.path.join(root, sub, name) for name in names
                      for sub in _IMAGE_PARENT_DIRS
                      if os.path.isdir(os.path.join(root, sub, name))), None)
    if image_dir is None:
        raise DataError(f"{root}: no image folder ({', '.join(names)}, in the root or Img/)")
    return identity_file, image_dir
