"""Face-verification evaluation (LFW / AgeDB / CFP-FP style) and the DiBiGAN
reconstruction protocol, in pure numpy.

Conventions
-----------
* Embeddings are 2-D float arrays ``(num_rows, dim)``.  Before any comparison
  rows are L2-normalised, so the *distance* between two embeddings is the
  squared Euclidean distance between unit vectors, ``||a/|a| - b/|b|||^2``,
  which lies in ``[0, 4]`` and equals ``2 - 2 * cos(a, b)``.
* A pair is predicted "same identity" iff ``distance < threshold`` (strict),
  as in insightface's ``verification.py``.
* The 10-fold protocol splits the *ordered* pair list into contiguous blocks
  (``sklearn.model_selection.KFold(n_splits, shuffle=False)`` semantics: the
  first ``n % k`` folds hold one extra pair).  :func:`make_pairs` orders its
  pairs so that each of those blocks holds the same share of positive pairs.
* Thresholds are chosen *exactly* (midpoints between consecutive distinct
  distances), not on a grid.

Reconstruction protocol (DiBiGAN paper, section 4.2)
----------------------------------------------------
The verification pairs are kept, but in every *positive* pair the first image
is replaced by the image reconstructed from its own embedding; the second image
stays real.  Negative pairs are untouched.  If reconstructions were perfect
(the matcher gives the reconstruction the same embedding as the original) the
accuracy equals the real-image accuracy; worse reconstructions push positive
distances up and lower the accuracy / TAR.

Every public function validates its inputs and raises :class:`ValueError`
with a message naming the offending argument (shape mismatch, NaN, Inf, ...).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "l2_normalize",
    "pair_distances",
    "cosine_similarity_rows",
    "fold_slices",
    "make_pairs",
    "best_threshold",
    "kfold_verification",
    "tar_at_far",
    "far_key",
    "verification_metrics",
    "reconstruction_protocol",
    "nearest_centroid_agreement",
]

# Above this many candidate pairs, make_pairs samples by rejection instead of
# enumerating every pair.
_ENUMERATE_LIMIT = 2_000_000


# ---------------------------------------------------------------------------
# Input validation helpers
# ---------------------------------------------------------------------------
def _as_float_array(x, name: str, ndim: Optional[int] = None) -> np.ndarray:
    """Converts ``x`` to a float64 array, checking ``ndim`` and finiteness."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric, got {type(x).__name__}: {err}") from err
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN values ({int(np.isnan(arr).sum())} of {arr.size})")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains Inf values ({int(np.isinf(arr).sum())} of {arr.size})")
    return arr


def _as_bool_array(x, name: str) -> np.ndarray:
    """Converts a 1-D array of booleans (or 0/1 integers) to a bool array."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if arr.size == 0:
        return arr.astype(bool)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be boolean (or 0/1), got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    if not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must contain only booleans or 0/1, got values "
                         f"{np.unique(arr)[:10].tolist()}")
    return arr.astype(bool)


def _as_index_array(x, name: str, upper: int) -> np.ndarray:
    """Converts ``x`` to a 1-D int64 array with values in ``[0, upper)``."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= upper):
        raise ValueError(f"{name} has indices outside [0, {upper}): "
                         f"min {arr.min()}, max {arr.max()}")
    return arr


def _check_distances(distances, is_same) -> Tuple[np.ndarray, np.ndarray]:
    d = _as_float_array(distances, "distances", ndim=1)
    s = _as_bool_array(is_same, "is_same")
    if d.shape != s.shape:
        raise ValueError(f"distances and is_same must have the same length, got "
                         f"{d.shape[0]} and {s.shape[0]}")
    if d.size == 0:
        raise ValueError("distances is empty: at least one pair is needed")
    return d, s


def _check_pair_embeddings(emb_a, emb_b) -> Tuple[np.ndarray, np.ndarray]:
    a = _as_float_array(emb_a, "emb_a", ndim=2)
    b = _as_float_array(emb_b, "emb_b", ndim=2)
    if a.shape != b.shape:
        raise ValueError(f"emb_a and emb_b must have the same shape, got {a.shape} and {b.shape}")
    return a, b


# ---------------------------------------------------------------------------
# Embedding geometry
# ---------------------------------------------------------------------------
def l2_normalize(x, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """L2-normalises ``x`` along ``axis``.

    Same formula as ``tf.math.l2_normalize``:
    ``x / sqrt(max(sum(x ** 2, axis), eps))``, so an all-zero row stays zero
    instead of producing NaN.

    Args:
      x: array-like of finite numbers.
      axis: axis to normalise along (default: last).
      eps: lower bound on the *squared* norm.

    Returns:
      float64 array of the same shape as ``x``.

    Raises:
      ValueError: if ``x`` contains NaN or Inf, or ``eps`` is not positive.
    """
    arr = _as_float_array(x, "x")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    sq = np.sum(arr * arr, axis=axis, keepdims=True)
    return arr / np.sqrt(np.maximum(sq, eps))


def pair_distances(emb_a, emb_b) -> np.ndarray:
    """Squared L2 distance between the L2-normalised rows of two arrays.

    Args:
      emb_a, emb_b: ``(num_pairs, dim)`` embeddings; row ``i`` of ``emb_a`` is
        compared with row ``i`` of ``emb_b``.

    Returns:
      ``(num_pairs,)`` float64 distances in ``[0, 4]`` (``2 - 2 cos``).
    """
    a, b = _check_pair_embeddings(emb_a, emb_b)
    diff = l2_normalize(a) - l2_normalize(b)
    return np.clip(np.sum(diff * diff, axis=1), 0.0, 4.0)


def cosine_similarity_rows(a, b) -> np.ndarray:
    """Row-wise cosine similarity.

    Args:
      a, b: arrays of the same shape ``(..., dim)``; compared along the last
        axis (a 1-D input is a single row).

    Returns:
      array of shape ``a.shape[:-1]`` with values in ``[-1, 1]`` (``0`` for a
      zero row).
    """
    x = _as_float_array(a, "a")
    y = _as_float_array(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must have the same shape, got {x.shape} and {y.shape}")
    if x.ndim == 0:
        raise ValueError("a and b must have at least one dimension")
    return np.clip(np.sum(l2_normalize(x) * l2_normalize(y), axis=-1), -1.0, 1.0)


# ---------------------------------------------------------------------------
# Pair construction
# ---------------------------------------------------------------------------
def fold_slices(num_items: int, num_folds: int) -> List[slice]:
    """Contiguous fold blocks, as ``sklearn KFold(num_folds, shuffle=False)``.

    Fold sizes are ``num_items // num_folds``, the first
    ``num_items % num_folds`` folds holding one extra item.
    """
    if num_folds < 1:
        raise ValueError(f"num_folds must be >= 1, got {num_folds}")
    if num_items < 0:
        raise ValueError(f"num_items must be >= 0, got {num_items}")
    base, extra = divmod(num_items, num_folds)
    slices, start = [], 0
    for k in range(num_folds):
        stop = start + base + (1 if k < extra else 0)
        slices.append(slice(start, stop))
        start = stop
    return slices


def _pair_keys(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    return lo.astype(np.int64) * n + hi.astype(np.int64)


def _unique_in_order(keys: np.ndarray) -> np.ndarray:
    _, first = np.unique(keys, return_index=True)
    return keys[np.sort(first)]


def _sample_unique(draw, count: int, n: int) -> np.ndarray:
    """Draws unique unordered pair keys with ``draw(batch) -> (i, j)``."""
    keys = np.zeros(0, dtype=np.int64)
    while keys.size < count:
        batch = 2 * (count - keys.size) + 16
        i, j = draw(batch)
        keys = _unique_in_order(np.concatenate([keys, _pair_keys(i, j, n)]))
    return keys[:count]


def _enumerate_positive_keys(inverse: np.ndarray, n: int) -> np.ndarray:
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse)
    keys, start = [], 0
    for c in counts:
        members = order[start:start + c]
        start += c
        if c >= 2:
            a, b = np.triu_indices(c, k=1)
            keys.append(_pair_keys(members[a], members[b], n))
    return np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)


def _enumerate_negative_keys(inverse: np.ndarray, n: int) -> np.ndarray:
    a, b = np.triu_indices(n, k=1)
    keep = inverse[a] != inverse[b]
    return _pair_keys(a[keep], b[keep], n)


def make_pairs(labels, num_positive: int, num_negative: int, seed: Optional[int] = 0,
               num_folds: int = 10) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples verification pairs from a labelled set, LFW style.

    Positive pairs join two different rows with the same label, negative
    pairs two rows with different labels.  Pairs are sampled uniformly without
    replacement among the *unordered* pairs of each kind, so no pair appears
    twice (in either order) and no row is paired with itself.

    The pairs are ordered for the k-fold protocol: the list is split into
    ``num_folds`` contiguous blocks exactly as :func:`fold_slices` (and
    :func:`kfold_verification`) split it, and fold ``k`` is a block of
    positives followed by a block of negatives.  The number of positives in
    each fold is proportional to its size (exactly equal when
    ``num_positive`` and ``num_negative`` are multiples of ``num_folds``;
    otherwise the shares differ by at most one pair).

    Args:
      labels: 1-D array of identity labels (any type ``np.unique`` can sort).
      num_positive: number of same-label pairs.
      num_negative: number of different-label pairs.
      seed: seed of ``np.random.default_rng``; the result is a deterministic
        function of ``(labels, num_positive, num_negative, seed, num_folds)``.
      num_folds: number of folds to balance (default 10).

    Returns:
      ``(idx_a, idx_b, is_same)``: int64, int64 and bool arrays of length
      ``num_positive + num_negative``.

    Raises:
      ValueError: if the labels do not provide enough distinct pairs of either
        kind, or the arguments are malformed.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise ValueError("labels contains NaN or Inf values")
    for name, value in (("num_positive", num_positive), ("num_negative", num_negative),
                        ("num_folds", num_folds)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    num_positive, num_negative, num_folds = int(num_positive), int(num_negative), int(num_folds)
    if num_positive < 0 or num_negative < 0:
        raise ValueError(f"num_positive and num_negative must be >= 0, got "
                         f"{num_positive} and {num_negative}")
    if num_folds < 1:
        raise ValueError(f"num_folds must be >= 1, got {num_folds}")

    n = labels.shape[0]
    _, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse, minlength=1) if n else np.zeros(0, dtype=np.int64)
    class_pairs = counts.astype(np.int64) * (counts.astype(np.int64) - 1) // 2
    available_pos = int(class_pairs.sum())
    available_neg = n * (n - 1) // 2 - available_pos
    if num_positive > available_pos:
        raise ValueError(f"labels provide only {available_pos} distinct positive (same-label) "
                         f"pairs, but num_positive={num_positive} were requested")
    if num_negative > available_neg:
        raise ValueError(f"labels provide only {available_neg} distinct negative "
                         f"(different-label) pairs, but num_negative={num_negative} "
                         f"were requested")

    rng = np.random.default_rng(seed)
    order = np.argsort(inverse, kind="stable")       # rows grouped by class
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)

    # --- positives -------------------------------------------------------
    if num_positive == 0:
        pos_keys = np.zeros(0, dtype=np.int64)
    elif available_pos <= _ENUMERATE_LIMIT or 2 * num_positive > available_pos:
        all_keys = _enumerate_positive_keys(inverse, n)
        pos_keys = all_keys[rng.choice(all_keys.size, size=num_positive, replace=False)]
    else:
        class_p = class_pairs / class_pairs.sum()

        def draw_pos(batch):
            # Class with probability ~ C(n_c, 2), then an ordered pair of
            # distinct members: uniform over unordered same-label pairs.
            c = rng.choice(counts.size, size=batch, p=class_p)
            r1 = rng.integers(0, counts[c])
            r2 = rng.integers(0, counts[c] - 1)
            r2 = r2 + (r2 >= r1)
            return order[starts[c] + r1], order[starts[c] + r2]

        pos_keys = _sample_unique(draw_pos, num_positive, n)

    # --- negatives -------------------------------------------------------
    if num_negative == 0:
        neg_keys = np.zeros(0, dtype=np.int64)
    elif n * (n - 1) // 2 <= _ENUMERATE_LIMIT or 2 * num_negative > available_neg:
        all_keys = _enumerate_negative_keys(inverse, n)
        neg_keys = all_keys[rng.choice(all_keys.size, size=num_negative, replace=False)]
    else:
        row_w = (n - counts[inverse]).astype(np.float64)
        row_p = row_w / row_w.sum()

        def draw_neg(batch):
            # Row i with probability ~ (#rows of other labels), then a uniform
            # row of another label: uniform over unordered different-label pairs.
            i = rng.choice(n, size=batch, p=row_p)
            c = inverse[i]
            r = rng.integers(0, n - counts[c])
            pos = np.where(r < starts[c], r, r + counts[c])
            return i, order[pos]

        neg_keys = _sample_unique(draw_neg, num_negative, n)

    def split(keys):
        a, b = keys // max(n, 1), keys % max(n, 1)
        swap = rng.random(keys.size) < 0.5           # random order inside a pair
        return np.where(swap, b, a), np.where(swap, a, b)

    pos_a, pos_b = split(pos_keys)
    neg_a, neg_b = split(neg_keys)

    # --- fold-balanced ordering -----------------------------------------
    total = num_positive + num_negative
    idx_a = np.empty(total, dtype=np.int64)
    idx_b = np.empty(total, dtype=np.int64)
    is_same = np.empty(total, dtype=bool)
    out = p_used = n_used = 0
    for fold in fold_slices(total, num_folds):
        # Positives placed up to the end of this fold, proportional to position.
        p_end = (num_positive * fold.stop) // total if total else 0
        n_end = fold.stop - p_end
        for src_a, src_b, lo, hi, same in ((pos_a, pos_b, p_used, p_end, True),
                                           (neg_a, neg_b, n_used, n_end, False)):
            m = hi - lo
            idx_a[out:out + m] = src_a[lo:hi]
            idx_b[out:out + m] = src_b[lo:hi]
            is_same[out:out + m] = same
            out += m
        p_used, n_used = p_end, n_end
    return idx_a, idx_b, is_same


# ---------------------------------------------------------------------------
# Thresholds and accuracies
# ---------------------------------------------------------------------------
def best_threshold(distances, is_same) -> Tuple[float, float]:
    """Threshold maximising verification accuracy (exact search).

    A pair is predicted "same" iff ``distance < threshold``.  Candidates are
    ``min(distances) - 1``, the midpoints between consecutive sorted distinct
    distances, and ``max(distances) + 1``; together they realise every
    possible split of the sorted distances.  Among thresholds with the best
    accuracy the smallest is returned.

    Args:
      distances: ``(num_pairs,)`` finite distances.
      is_same: ``(num_pairs,)`` booleans, True for same-identity pairs.

    Returns:
      ``(threshold, accuracy)`` as Python floats.
    """
    d, s = _check_distances(distances, is_same)
    uniq, inv = np.unique(d, return_inverse=True)
    inv = inv.reshape(-1)
    pos_per = np.bincount(inv, weights=s, minlength=uniq.size).astype(np.int64)
    neg_per = np.bincount(inv, weights=~s, minlength=uniq.size).astype(np.int64)
    # Split m (0..U): the m smallest distinct values are predicted "same".
    tp = np.concatenate([[0], np.cumsum(pos_per)])
    fp = np.concatenate([[0], np.cumsum(neg_per)])
    correct = tp + (int(neg_per.sum()) - fp)
    m = int(np.argmax(correct))                       # first = smallest threshold
    if m == 0:
        thr = float(uniq[0]) - 1.0
    elif m == uniq.size:
        thr = float(uniq[-1]) + 1.0
    else:
        lo, hi = float(uniq[m - 1]), float(uniq[m])
        thr = lo + (hi - lo) / 2.0
        if not thr > lo:                              # adjacent floats: keep split exact
            thr = hi
    return thr, float(correct[m]) / d.size


def kfold_verification(distances, is_same, num_folds: int = 10) -> Dict[str, object]:
    """k-fold verification accuracy, as insightface's ``calculate_roc``.

    The pair list is split into ``num_folds`` contiguous blocks
    (:func:`fold_slices`).  For each fold the threshold is chosen with
    :func:`best_threshold` on the other folds and the accuracy is measured
    on the held-out fold.

    Returns:
      dict with ``accuracy_mean`` (float), ``accuracy_std`` (population std,
      ddof=0), ``fold_accuracies`` (list of floats) and ``thresholds`` (list
      of the per-fold thresholds).
    """
    d, s = _check_distances(distances, is_same)
    if isinstance(num_folds, (bool, np.bool_)) or not isinstance(num_folds, (int, np.integer)):
        raise ValueError(f"num_folds must be an integer, got {num_folds!r}")
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2, got {num_folds}")
    if d.size < num_folds:
        raise ValueError(f"need at least num_folds={num_folds} pairs, got {d.size}")
    accs, thrs = [], []
    for fold in fold_slices(d.size, int(num_folds)):
        train = np.ones(d.size, dtype=bool)
        train[fold] = False
        thr, _ = best_threshold(d[train], s[train])
        acc = float(np.mean((d[fold] < thr) == s[fold]))
        accs.append(acc)
        thrs.append(thr)
    return {
        "accuracy_mean": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "fold_accuracies": accs,
        "thresholds": thrs,
    }


def tar_at_far(distances, is_same, far: float = 1e-3) -> Dict[str, float]:
    """True accept rate at a false accept rate.

    The threshold is the largest ``t`` such that the fraction of negative
    pairs with ``distance < t`` is at most ``far``.  With ``k =
    floor(far * num_negatives)`` allowed false accepts this is the
    ``(k+1)``-th smallest negative distance (ties are handled because the
    comparison is strict); when ``k = 0`` (including ``far * num_negatives <
    1``) it is the smallest negative distance, i.e. zero false accepts.  When
    every negative may be accepted (``k >= num_negatives``) the threshold is
    ``inf``.

    Returns:
      dict with ``tar`` (fraction of positive pairs with ``distance < t``),
      ``far`` (achieved false accept rate, ``<=`` the requested one) and
      ``threshold``.
    """
    d, s = _check_distances(distances, is_same)
    try:
        far = float(far)
    except (TypeError, ValueError) as err:
        raise ValueError(f"far must be a number, got {far!r}") from err
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be in [0, 1], got {far}")
    pos, neg = d[s], np.sort(d[~s])
    if pos.size == 0:
        raise ValueError("tar_at_far needs at least one positive pair (is_same all False)")
    if neg.size == 0:
        raise ValueError("tar_at_far needs at least one negative pair (is_same all True)")
    # Tolerance so that e.g. 1e-3 * 3000 counts as 3 despite rounding.
    k = int(math.floor(far * neg.size * (1.0 + 1e-9)))
    thr = float("inf") if k >= neg.size else float(neg[k])
    return {
        "tar": float(np.mean(pos < thr)),
        "far": float(np.mean(neg < thr)),
        "threshold": thr,
    }


def far_key(far: float) -> str:
    """Dictionary key of the TAR at ``far``, e.g. ``tar_at_far_1e-03``."""
    return f"tar_at_far_{far:.0e}"


def _metrics_from_distances(d: np.ndarray, s: np.ndarray, num_folds: int,
                            fars: Sequence[float]) -> Dict[str, float]:
    kf = kfold_verification(d, s, num_folds=num_folds)
    out = {"accuracy": kf["accuracy_mean"], "accuracy_std": kf["accuracy_std"]}
    for far in fars:
        out[far_key(far)] = tar_at_far(d, s, far=far)["tar"]
    return out


def verification_metrics(emb_a, emb_b, is_same, num_folds: int = 10,
                         fars: Sequence[float] = (1e-3,)) -> Dict[str, float]:
    """Standard verification metrics for pairs of embeddings.

    Args:
      emb_a, emb_b: ``(num_pairs, dim)`` embeddings of the two sides of each pair.
      is_same: ``(num_pairs,)`` booleans.
      num_folds: folds of :func:`kfold_verification`.
      fars: false accept rates for :func:`tar_at_far`.

    Returns:
      flat dict ``{"accuracy": mean k-fold accuracy, "accuracy_std": its
      population std, far_key(f): TAR at f for f in fars}``, e.g.
      ``tar_at_far_1e-03``.
    """
    a, b = _check_pair_embeddings(emb_a, emb_b)
    s = _as_bool_array(is_same, "is_same")
    if s.shape[0] != a.shape[0]:
        raise ValueError(f"is_same has {s.shape[0]} entries but there are {a.shape[0]} pairs")
    return _metrics_from_distances(pair_distances(a, b), s, num_folds, fars)


def reconstruction_protocol(real_embeddings, recon_embeddings, idx_a, idx_b, is_same,
                            num_folds: int = 10,
                            fars: Sequence[float] = (1e-3,)) -> Dict[str, float]:
    """DiBiGAN reconstruction verification protocol (paper, section 4.2).

    The pairs ``(idx_a[p], idx_b[p])`` are scored as in
    :func:`verification_metrics`, except that for every *positive* pair the
    first image is replaced by its reconstruction: its embedding is
    ``recon_embeddings[idx_a[p]]`` instead of ``real_embeddings[idx_a[p]]``.
    The second image of every pair and both images of negative pairs stay
    real.

    Args:
      real_embeddings: ``(num_images, dim)`` matcher embeddings of the real images.
      recon_embeddings: ``(num_images, dim)``; row ``i`` is the matcher's
        embedding of the image reconstructed from image ``i``'s features.
      idx_a, idx_b: ``(num_pairs,)`` integer image indices.
      is_same: ``(num_pairs,)`` booleans.
      num_folds, fars: as in :func:`verification_metrics`.

    Returns:
      the same dict as :func:`verification_metrics`.
    """
    real = _as_float_array(real_embeddings, "real_embeddings", ndim=2)
    recon = _as_float_array(recon_embeddings, "recon_embeddings", ndim=2)
    if real.shape != recon.shape:
        raise ValueError(f"real_embeddings and recon_embeddings must have the same shape, "
                         f"got {real.shape} and {recon.shape}")
    ia = _as_index_array(idx_a, "idx_a", real.shape[0])
    ib = _as_index_array(idx_b, "idx_b", real.shape[0])
    s = _as_bool_array(is_same, "is_same")
    if not ia.shape == ib.shape == s.shape:
        raise ValueError(f"idx_a, idx_b and is_same must have the same length, got "
                         f"{ia.shape[0]}, {ib.shape[0]} and {s.shape[0]}")
    emb_a = np.where(s[:, None], recon[ia], real[ia])
    emb_b = real[ib]
    return verification_metrics(emb_a, emb_b, s, num_folds=num_folds, fars=fars)


def nearest_centroid_labels(embeddings, labels, centroid_embeddings,
                            centroid_labels) -> np.ndarray:
    """The label of each row's nearest class centroid (by cosine); see
    `nearest_centroid_agreement` for the arguments, checks and tie rule."""
    return _nearest_centroid(embeddings, labels, centroid_embeddings, centroid_labels)[1]


def nearest_centroid_agreement(embeddings, labels, centroid_embeddings,
                               centroid_labels) -> float:
    """Fraction of rows whose nearest class centroid (by cosine) has their label.

    Centroids are the means of the L2-normalised ``centroid_embeddings`` of
    each label, normalised again.  Ties between centroids go to the smallest
    label (``np.unique`` order).

    Args:
      embeddings: ``(n, dim)`` query embeddings (e.g. of reconstructions).
      labels: ``(n,)`` their labels.
      centroid_embeddings: ``(m, dim)`` reference embeddings (e.g. real images).
      centroid_labels: ``(m,)`` their labels.

    Returns:
      agreement in ``[0, 1]`` as a float.

    Raises:
      ValueError: on shape mismatch, NaN/Inf, empty inputs, or a query label
        that has no centroid.
    """
    query_labels, nearest = _nearest_centroid(embeddings, labels, centroid_embeddings,
                                              centroid_labels)
    return float(np.mean(nearest == query_labels))


def _nearest_centroid(embeddings, labels, centroid_embeddings, centroid_labels):
    """(query labels, nearest centroid labels), both [n], after every check."""
    q = _as_float_array(embeddings, "embeddings", ndim=2)
    c = _as_float_array(centroid_embeddings, "centroid_embeddings", ndim=2)
    ql = np.asarray(labels)
    cl = np.asarray(centroid_labels)
    if ql.ndim != 1 or ql.shape[0] != q.shape[0]:
        raise ValueError(f"labels must be 1-D with {q.shape[0]} entries, got shape {ql.shape}")
    if cl.ndim != 1 or cl.shape[0] != c.shape[0]:
        raise ValueError(f"centroid_labels must be 1-D with {c.shape[0]} entries, "
                         f"got shape {cl.shape}")
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"embeddings have dim {q.shape[1]} but centroid_embeddings "
                         f"have dim {c.shape[1]}")
    if q.shape[0] == 0 or c.shape[0] == 0:
        raise ValueError("embeddings and centroid_embeddings must be non-empty")
    classes, cinv = np.unique(cl, return_inverse=True)
    cinv = cinv.reshape(-1)
    missing = ~np.isin(ql, classes)
    if missing.any():
        raise ValueError(f"labels {np.unique(ql[missing])[:10].tolist()} have no centroid "
                         f"in centroid_labels")
    sums = np.zeros((classes.size, c.shape[1]))
    np.add.at(sums, cinv, l2_normalize(c))
    centroids = l2_normalize(sums / np.bincount(cinv)[:, None])
    nearest = np.argmax(l2_normalize(q) @ centroids.T, axis=1)
    return ql, classes[nearest]
