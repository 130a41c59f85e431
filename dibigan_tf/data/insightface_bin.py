"""insightface's verification files (`lfw.bin`, `agedb_30.bin`, `cfp_fp.bin`, ...).

Each file is a pickle of `(bins, issame_list)`: `bins` holds the encoded (JPEG/PNG) bytes of 2n
images, pair i being `bins[2i]` and `bins[2i + 1]`, and `issame_list` holds n booleans. Older
files were pickled by Python 2 (their image bytes arrive as `bytes` with `encoding="bytes"`).

A pickle can run code while it loads, so these files are read by an unpickler that resolves no
global at all: nothing in the file can name a function or class to call. The one exception is the
way Python 3 writes `bytes` under pickle protocols 0-2 (`_codecs.encode(text, "latin1")`), which is
answered by a local stand-in that only re-encodes a string as latin-1; any other global is refused.
The loaded object is then checked to be exactly a pair of (list of bytes, list of booleans).
"""
from __future__ import annotations

import io
import pickle

import numpy as np

from dibigan_tf.data.base import DataError
from dibigan_tf.data.faces import open_image, to_rgb


def _latin1_bytes(text, encoding="latin1"):
    """Stand-in for `_codecs.encode` as Python 3 uses it to pickle bytes under protocol <= 2."""
    if not isinstance(text, str) or not isinstance(encoding, str) or \
            encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise DataError(f"refuses to load _codecs.encode with arguments other than "
                        f"(str, 'latin1'): got ({type(text).__name__}, {encoding!r})")
    return text.encode("latin-1")


class _DataOnlyUnpickler(pickle.Unpickler):
    """Builds strings, bytes, numbers, lists, tuples, dicts and booleans only."""

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        raise DataError(f"refuses to load {module}.{name}: only bytes, lists, tuples and "
                        f"booleans are accepted")

    def persistent_load(self, pid):
        raise DataError("refuses to load a persistent id: only bytes, lists, tuples and "
                        "booleans are accepted")


def _load(path: str):
    try:
        with open(path, "rb") as handle:
            return _DataOnlyUnpickler(handle, encoding="bytes").load()
    except DataError as error:
        raise DataError(f"{path}: {error}") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error})") from None
    except Exception as error:  # UnpicklingError, EOFError, ValueError... of a damaged file
        raise DataError(f"{path}: not a readable verification pickle "
                        f"({type(error).__name__}: {error})") from None


def _check_structure(path: str, data):
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise DataError(f"{path}: expected a pickled (bins, issame_list) pair, got "
                        f"{type(data).__name__}" +
                        (f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""))
    bins, issame = data
    if not isinstance(bins, (list, tuple)):
        raise DataError(f"{path}: bins must be a list of encoded images, got "
                        f"{type(bins).__name__}")
    if not isinstance(issame, (list, tuple)):
        raise DataError(f"{path}: issame_list must be a list of booleans, got "
                        f"{type(issame).__name__}")
    for i, item in enumerate(bins):
        if not isinstance(item, (bytes, bytearray)):
            raise DataError(f"{path}: bins[{i}] is a {type(item).__name__}, not encoded image "
                            f"bytes")
    for i, item in enumerate(issame):
        if type(item) is not bool:
            raise DataError(f"{path}: issame_list[{i}] is {item!r} ({type(item).__name__}), "
                            f"not a boolean")
    if len(bins) != 2 * len(issame):
        raise DataError(f"{path}: {len(bins)} images for {len(issame)} pairs (expected "
                        f"{2 * len(issame)})")
    return bins, issame


def _decode(path: str, index: int, data) -> np.ndarray:
    # broken data or more pixels than the limit: a DataError naming the file and the image
    image = open_image(io.BytesIO(bytes(data)), f"{path}: image {index} (pair {index // 2})",
                       unreadable="cannot be decoded")
    return to_rgb(image)


def read_verification_bin(path: str, max_pairs: int = 0):
    """(images uint8 [2n, h, w, 3], is_same bool [n]) of an insightface verification file.

    Pair i is images[2i], images[2i + 1]. max_pairs > 0 reads only the first pairs. A file that
    names any class or function, has another structure, or holds an undecodable image is a
    DataError (naming the image index)."""
    bins, issame = _check_structure(path, _load(path))
    if max_pairs and max_pairs > 0:
        issame = issame[:max_pairs]
        bins = bins[:2 * len(issame)]
    if not issame:
        raise DataError(f"{path}: holds no pairs")
    images = [_decode(path, i, data) for i, data in enumerate(bins)]
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        first = images[0].shape
        odd = next(i for i, image in enumerate(images) if image.shape != first)
        raise DataError(f"{path}: images differ in size (image 0 is {first}, image {odd} is "
                        f"{images[odd].shape})")
    return np.stack(images).astype(np.uint8), np.array(issame, dtype=bool)
