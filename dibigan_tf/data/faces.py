"""Face datasets in identity folders (`<root>/<identity>/<image>`: the layout of LFW,
CASIA-WebFace and VGGFace2), aligned once and cached, split by person.

Reading is forgiving and loud: an unreadable or truncated file, an image without a face (under
`none="skip"`) or an empty identity folder is counted, one example of each kind is logged, and the
run goes on with the good images. Greyscale, palette, alpha, CMYK and 16-bit images are converted
to 8-bit RGB. No image is ever given another identity: labels come from the folder each file was
read from, and a failed image is dropped, never replaced.

Aligned crops are cached in shards under `<cache_dir>/<aligner key>/`, keyed by the file's path
relative to the root, size and modification time, so a second run aligns nothing and an
interrupted alignment resumes. Each crop is also stored under the SHA-1 of the file's bytes: a
folder copied or restored elsewhere (new modification times, the same bytes) is found by content
and not aligned again.
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import hashlib
import os
import re
import time
import warnings

import numpy as np
from absl import logging
from PIL import Image

from dibigan_tf.data.base import DataError, ImageSet, file_sha1

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")


def image_extensions() -> tuple:
    """Every file extension Pillow can open (lower case, with the dot): IMAGE_EXTENSIONS and
    whatever else the installed Pillow registers a reader for (.gif, .pbm, .tga, .ico...)."""
    Image.init()
    readable = {ext.lower() for ext, fmt in Image.registered_extensions().items()
                if fmt in Image.OPEN}
    return tuple(sorted(readable | set(IMAGE_EXTENSIONS)))


def _natural_key(name: str):
    """Sort key putting numbers in numeric order: 2.pgm before 10.pgm."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower())
            for part in re.split(r"(\d+)", name) if part]


def folder_images(folder: str) -> list:
    """The image files (any extension Pillow reads) of one identity folder, in natural order."""
    extensions = image_extensions()
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted((f for f in names if f.lower().endswith(extensions)
                   and os.path.isfile(os.path.join(folder, f))), key=_natural_key)


_LFW_FILE = re.compile(r"^(?P<name>.+)_(?P<number>\d{4})\.[A-Za-z0-9]+$")


def numbered_images(identity: str, files) -> dict:
    """{number: file name} of one identity folder's image files, the numbering pairs files use:
    LFW's own (`<identity>_NNNN.<ext>` is number NNNN) when every file is named so, otherwise
    each file's 1-based position in natural order (ORL's `s1/1.pgm ... 10.pgm` are 1..10)."""
    files = sorted(files, key=_natural_key)
    matches = [_LFW_FILE.match(f) for f in files]
    if files and all(m and m.group("name") == identity for m in matches):
        return {int(m.group("number")): f for m, f in zip(matches, files)}
    return {i: f for i, f in enumerate(files, 1)}
#: the most pixels an image may have once decoded (about 120 MB as RGB): a larger image is refused
#: with a one-line error naming the file, before any pixel is decoded.
MAX_PIXELS = 40_000_000
#: a JPEG may declare up to this many pixels: its decoder scales it down by up to 8 in each
#: direction while decoding (`draft`), so only the reduced image is ever held in memory.
MAX_JPEG_PIXELS = 64 * MAX_PIXELS


def open_image(source, name: str, unreadable: str = "unreadable image") -> Image.Image:
    """A decoded PIL image of a file path or file-like object, refused with a DataError naming
    `name` when it is unreadable or declares more pixels than MAX_PIXELS (a JPEG: more than
    MAX_JPEG_PIXELS, or more than MAX_PIXELS even at its decoder's 1/8 scale). Only the header is
    read before the check, so a small file declaring a huge image (a decompression bomb) costs
    nothing. A JPEG over MAX_PIXELS is decoded at a reduced scale instead."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(source)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
            width, height = image.size
            pixels = width * height
            if pixels > MAX_PIXELS:
                if image.format != "JPEG" or pixels > MAX_JPEG_PIXELS:
                    raise _TooLarge(f"{width}x{height} pixels, over the limit of {MAX_PIXELS:,}"
                                    + (" even decoded at 1/8 scale" if image.format == "JPEG"
                                       else ""))
                # the decoder scales by 1/2, 1/4 or 1/8: the least that brings it under the limit
                factor = next((f for f in (2, 4, 8) if pixels / f ** 2 <= MAX_PIXELS), 8)
                image.draft("RGB", (max(1, width // factor), max(1, height // factor)))
                if image.size[0] * image.size[1] > 2 * MAX_PIXELS:   # rounding up aside
                    raise _TooLarge(f"{width}x{height} pixels, over the limit of {MAX_PIXELS:,} "
                                    f"even decoded at 1/8 scale")
            image.load()
            if image.size[0] * image.size[1] > MAX_PIXELS:
                image.thumbnail((int(image.size[0] * 0.99), int(image.size[1] * 0.99)))
    except _TooLarge as error:
        raise DataError(f"{name}: image too large ({error}); skipped") from None
    except Exception as error:  # PIL raises many types for broken files
        raise DataError(f"{name}: {unreadable} ({type(error).__name__}: "
                        f"{_one_line(error)})") from None
    return image


class _TooLarge(Exception):
    pass


def _one_line(error) -> str:
    return " ".join(str(error).split())[:300]


@dataclasses.dataclass
class FaceSet(ImageSet):
    """An ImageSet of aligned faces that remembers each image's file (relative to the root)."""

    paths: list = dataclasses.field(default_factory=list)

    def subset(self, indices) -> "FaceSet":
        indices = np.asarray(indices, dtype=np.int64)
        return FaceSet(self.images[indices], self.labels[indices], list(self.class_names),
                       [self.paths[i] for i in indices])


def scan_identity_folders(root: str):
    """(relative paths, identity names, empty folders) of `<root>/<identity>/<image>` files,
    sorted. A root without identity folders is a DataError."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such directory (expected <root>/<identity>/<image>)")
    # LFW's official archive and ours keep the identity folders under images/.
    base = os.path.join(root, "images") if os.path.isdir(os.path.join(root, "images")) else root
    paths, names, empty = [], [], []
    for identity in sorted(os.listdir(base)):
        folder = os.path.join(base, identity)
        if not os.path.isdir(folder):
            continue
        files = folder_images(folder)
        if not files:
            empty.append(identity)
            continue
        for f in files:
            paths.append(os.path.relpath(os.path.join(folder, f), root))
            names.append(identity)
    if not paths:
        raise DataError(f"{root}: found no images in identity folders (expected "
                        f"<root>/<identity>/<image>, any image format Pillow reads)")
    if empty:
        logging.warning("%d empty identity folders skipped (e.g. %s)", len(empty), empty[0])
    return paths, names, empty


def read_rgb(path: str) -> np.ndarray:
    """A file as uint8 RGB [h, w, 3]; DataError (naming the file and the reason) when it cannot
    be read or is over the pixel limit (`open_image`)."""
    return to_rgb(open_image(path, path))


def to_rgb(image: Image.Image) -> np.ndarray:
    """8-bit RGB of any PIL mode (16-bit scaled down, alpha composited on black, CMYK converted)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=-1)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0) + 0.5, 0, 255)
        return np.repeat(array.astype(np.uint8)[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and
                                              "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _record_key(root: str, rel: str) -> str:
    stat = os.stat(os.path.join(root, rel))
    return f"{rel}|{stat.st_size}|{stat.st_mtime_ns}"


class AlignedCache:
    """Shards of aligned crops keyed by (path, size, mtime); failures are cached too.

    A shard row may also carry the SHA-1 of the file's bytes (`digests`, "" where unknown), so
    that `by_digest` finds a crop whose file kept its bytes but not its key (a copied or
    restored folder). `alias` records such files' new keys (`alias-*.npz`: keys and digests, no
    pixels), so later runs find them by key without reading the files.
    """

    def __init__(self, cache_dir: str, aligner_key: str):
        self.dir = os.path.join(cache_dir, aligner_key)
        os.makedirs(self.dir, exist_ok=True)
        self.entries, self.by_digest = {}, {}
        for shard in sorted(glob.glob(os.path.join(self.dir, "shard-*.npz"))):
            try:
                with np.load(shard) as data:
                    keys, status, images = data["keys"], data["status"], data["images"]
                    digests = data["digests"] if "digests" in data.files else [""] * len(keys)
            except Exception as error:  # a shard cut short by a crash: align those again
                logging.warning("%s: unreadable cache shard (%s); its images are aligned again",
                                shard, error)
                continue
            self._remember(keys, status, images, digests)
        for alias in sorted(glob.glob(os.path.join(self.dir, "alias-*.npz"))):
            try:
                with np.load(alias) as data:
                    pairs = list(zip(data["keys"], data["digests"]))
            except Exception as error:  # cut short by a crash: those are looked up again
                logging.warning("%s: unreadable cache alias file (%s)", alias, error)
                continue
            for key, digest in pairs:
                if str(digest) in self.by_digest:
                    self.entries[str(key)] = self.by_digest[str(digest)]

    def _remember(self, keys, status, images, digests):
        for k, s, im, d in zip(keys, status, images, digests):
            self.entries[str(k)] = (str(s), im)
            if d:
                self.by_digest[str(d)] = self.entries[str(k)]

    def _write(self, prefix, **arrays):
        index = len(glob.glob(os.path.join(self.dir, f"{prefix}-*.npz")))
        path = os.path.join(self.dir, f"{prefix}-{index:05d}.npz")
        tmp = path + ".tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    def add(self, keys, status, images, size, digests=None):
        stack = np.stack([im if im is not None else np.zeros((size, size, 3), np.uint8)
                          for im in images])
        digests = [""] * len(keys) if digests is None else list(digests)
        self._write("shard", keys=np.array(keys), status=np.array(status), images=stack,
                    digests=np.array(digests))
        self._remember(keys, status, stack, digests)

    def alias(self, keys, digests):
        """Files whose bytes are cached under other keys: their keys now name the same crops."""
        self._write("alias", keys=np.array(keys), digests=np.array(digests))
        for key, digest in zip(keys, digests):
            self.entries[key] = self.by_digest[digest]


def _content_digest(path: str) -> str:
    """"sha1:<hex>" of a file's bytes, or "" when it cannot be read (alignment then counts it
    unreadable)."""
    try:
        return "sha1:" + file_sha1(path)
    except OSError:
        return ""


def load_face_folders(root: str, aligner, cache_dir: str, chunk_size: int = 500,
                      progress=None, max_images: int = 0, records=None):
    """Aligned faces of every identity folder under `root`; returns (FaceSet, stats).

    records: (relative paths, identity names) from another listing (a CelebA identity file, an
    LFW people file...) instead of scanning `root`'s identity folders.
    stats counts images read, aligned, with several faces, centre-cropped, with no face and
    unreadable, with one example path of each kind of failure.
    """
    if records is None:
        paths, names, empty = scan_identity_folders(root)
        missing = []
    else:
        paths, names = list(records[0]), list(records[1])
        empty = []
        missing = [p for p in paths if not os.path.isfile(os.path.join(root, p))]
        if missing:
            logging.warning("%d listed images are missing under %s (e.g. %s); skipped",
                            len(missing), root, missing[0])
            keep = [i for i, p in enumerate(paths) if os.path.isfile(os.path.join(root, p))]
            paths, names = [paths[i] for i in keep], [names[i] for i in keep]
        if not paths:
            raise DataError(f"{root}: none of the listed images exists")
    if max_images:
        paths, names = paths[:max_images], names[:max_images]
    cache = AlignedCache(cache_dir, aligner.key)
    keys = [_record_key(root, p) for p in paths]
    todo = [i for i, k in enumerate(keys) if k not in cache.entries]
    digests = {i: _content_digest(os.path.join(root, paths[i])) for i in todo}
    same_bytes = [i for i in todo if digests[i] in cache.by_digest]
    if same_bytes:
        cache.alias([keys[i] for i in same_bytes], [digests[i] for i in same_bytes])
        logging.info("%d photos new to the cache by path and file time have cached crops of "
                     "the same bytes (a copied or restored folder): not aligned again",
                     len(same_bytes))
        todo = [i for i in todo if keys[i] not in cache.entries]
    start = time.time()
    for c in range(0, len(todo), chunk_size):
        chunk = todo[c:c + chunk_size]
        done = [align_one(aligner, lambda: read_rgb(os.path.join(root, paths[i])))
                for i in chunk]
        cache.add([keys[i] for i in chunk], [d[0] for d in done], [d[1] for d in done],
                  aligner.size, digests=[digests[i] for i in chunk])
        if progress:
            progress(min(c + chunk_size, len(todo)), len(todo), time.time() - start)
    return faces_from_cache(paths, names, keys, cache, root, aligned_this_pass=len(todo),
                            found_by_content=len(same_bytes),
                            empty_identity_folders=len(empty), listed_missing=len(missing))


def align_one(aligner, read):
    """(status, crop or None) of one photo: `read()` gives its RGB pixels; an unreadable photo
    is logged and counted, never fatal."""
    try:
        result = aligner.align(read())
        return result.status, result.image
    except DataError as error:
        logging.warning("%s", error)
        return "unreadable", None


def faces_from_cache(records, names, keys, cache, source: str, **extra_stats):
    """(FaceSet, stats) of the images `records` (their ids: relative paths or example ids) of
    identities `names`, read from the aligned-crop `cache` under `keys`; photos without a face
    or unreadable are left out and counted (stats: images, aligned, the share, each status's
    count and one example record of each failure, and `extra_stats`)."""
    counts, examples = collections.Counter(), {}
    kept, images = [], []
    for record, name, key in zip(records, names, keys):
        status, image = cache.entries[key]
        counts[status] += 1
        examples.setdefault(status, record)
        if status in ("none", "unreadable"):
            continue
        kept.append((record, name))
        images.append(image)
    if not kept:
        raise DataError(f"{source}: none of {len(records)} images gave an aligned face "
                        f"({dict(counts)})")
    class_names = sorted({name for _, name in kept})
    index = {name: i for i, name in enumerate(class_names)}
    faces = FaceSet(np.stack(images).astype(np.uint8),
                    np.array([index[name] for _, name in kept], dtype=np.int64), class_names,
                    [record for record, _ in kept])
    stats = {"images": len(records), "aligned": len(kept),
             "aligned_share": len(kept) / len(records), **extra_stats,
             **{f"status_{k}": int(v) for k, v in sorted(counts.items())},
             "examples": {k: v for k, v in examples.items() if k != "ok"}}
    for kind in ("none", "unreadable"):
        if counts[kind]:
            logging.warning("%d images skipped as %s (e.g. %s)", counts[kind],
                            "having no face" if kind == "none" else kind, examples[kind])
    return faces, stats


def split_identities(labels: np.ndarray, heldout_fraction: float, seed: int | str):
    """(train indices, held-out indices): a fixed share of the *people* is held out (never an
    image of a training person), by a seeded permutation of the identity indices."""
    identities = np.unique(labels)
    if not 0.0 < heldout_fraction < 1.0:
        raise DataError(f"heldout fraction must be in (0, 1), got {heldout_fraction}")
    count = max(1, int(round(len(identities) * heldout_fraction)))
    if count >= len(identities):
        raise DataError(f"{len(identities)} identities are too few to hold out {count}")
    digest = int(hashlib.sha1(f"split-{seed}".encode()).hexdigest()[:8], 16)
    held = set(np.random.default_rng(digest).permutation(identities)[:count].tolist())
    is_held = np.array([label in held for label in labels])
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


def read_lfw_pairs(path: str):
    """LFW pairs file: list of (name1, number1, name2, number2, same). Header lines (a count, or
    'folds count') are skipped; a malformed line is a DataError with its line number."""
    pairs = []
    lines = _text_lines(path, "pairs file")
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if all(p.isdigit() for p in parts) and len(parts) <= 2:
            continue   # header
        try:
            if len(parts) == 3:
                pairs.append((parts[0], int(parts[1]), parts[0], int(parts[2]), True))
            elif len(parts) == 4:
                pairs.append((parts[0], int(parts[1]), parts[2], int(parts[3]), False))
            else:
                raise ValueError(f"{len(parts)} fields")
        except ValueError as error:
            raise DataError(f"{path}:{number}: not an LFW pair line ({error}): {line!r}") from None
    return pairs


def _text_lines(path: str, what: str) -> list:
    """The lines of a UTF-8 text file; a DataError naming the file (and the line of a byte that
    is not UTF-8) when it is missing, a folder or not UTF-8 text."""
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, not a {what} (experiments/make_pairs.py writes a "
                        f"pairs file for an identity folder)")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise DataError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x}); save "
                        f"the {what} as UTF-8") from None


def read_lfw_people(path: str, root: str = ""):
    """LFW `people*.txt` (`name count` per line, count lines skipped) -> (relative paths, names)
    of every image it lists (`<name>/<name>_NNNN.jpg`, under `images/` when `root` has that
    folder). A malformed line is a DataError with its line number."""
    sub = "images" if root and os.path.isdir(os.path.join(root, "images")) else ""
    paths, names = [], []
    lines = _text_lines(path, "people file")
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or (len(parts) == 1 and parts[0].isdigit()):
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise DataError(f"{path}:{number}: not an LFW people line (name count): {line!r}")
        for i in range(1, int(parts[1]) + 1):
            paths.append(os.path.join(sub, lfw_file_name(parts[0], i)))
            names.append(parts[0])
    return paths, names


def index_pairs(pairs, key_of, where: dict):
    """Pairs of an LFW pairs file as indices: (idx_a, idx_b, is_same, dropped) of the pairs
    (`read_lfw_pairs`) whose two images are both found, `key_of(name, number)` giving an image's
    key (None: not there) and `where` the index of each key; `dropped` counts the others."""
    a, b, same, dropped = [], [], [], 0
    for n1, i1, n2, i2, is_same in pairs:
        k1, k2 = key_of(n1, i1), key_of(n2, i2)
        if k1 in where and k2 in where:
            a.append(where[k1])
            b.append(where[k2])
            same.append(is_same)
        else:
            dropped += 1
    return np.array(a, np.int64), np.array(b, np.int64), np.array(same, bool), dropped


def heldout_image_paths(run_dir: str) -> list:
    """The held-out image paths a face run recorded (`<run>/split.json`, `<identity>/<image>`
    relative to its data root); a DataError when there is none or it names no paths (digits)."""
    import json
    path = os.path.join(run_dir, "split.json")
    if not os.path.exists(path):
        raise DataError(f"{run_dir}: no split.json there (a face run writes it)")
    with open(path) as handle:
        held = [str(p).replace("\\", "/") for p in json.load(handle).get("heldout", [])]
    if not any("/" in p for p in held):
        raise DataError(f"{run_dir}: its split.json names no image paths (a digits run?)")
    return held


class PairFiles:
    """Finds the file of (identity, number) as pairs files name images, under `root` or its
    `images/` folder: `numbered_images` of the identity's folder (LFW's `<name>_NNNN.<ext>`, or
    the number-th image in natural order for any other naming)."""

    def __init__(self, root: str):
        self.root = root
        self.sub = "images" if os.path.isdir(os.path.join(root, "images")) else ""
        self._folders = {}

    def numbers(self, identity: str) -> dict:
        if identity not in self._folders:
            folder = os.path.join(self.root, self.sub, identity)
            safe = identity not in ("", ".", "..") and "/" not in identity and "\\" not in identity
            self._folders[identity] = (numbered_images(identity, folder_images(folder))
                                       if safe else {})
        return self._folders[identity]

    def __call__(self, identity: str, number: int):
        """The path relative to the root, or None when there is no such image."""
        name = self.numbers(identity).get(int(number))
        return None if name is None else os.path.join(self.sub, identity, name)


def lfw_file_name(name: str, number: int) -> str:
    """`<name>/<name>_NNNN.jpg`, LFW's file naming."""
    return os.path.join(name, f"{name}_{number:04d}.jpg")


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [n, h, w, c] -> [n, size, size, c] (area-averaging when shrinking); c = 1 (grey,
    resized as a 2-D image: Pillow has no one-channel 3-D mode) or 3."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
    for i, image in enumerate(images):
        plane = image[..., 0] if image.shape[-1] == 1 else image
        resized = np.asarray(Image.fromarray(plane).resize(
            (size, size), Image.BOX if size < image.shape[0] else Image.BICUBIC))
        out[i] = resized.reshape(size, size, images.shape[3])
    return out
