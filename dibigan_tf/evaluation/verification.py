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
* Folds (:func:`fold_test_indices`).  When the *ordered* pair list cut into
  contiguous blocks (``sklearn.model_selection.KFold(n_splits, shuffle=False)``
  semantics: the first ``n % k`` folds hold one extra pair) gives every block
  its share of positive pairs (within one pair), those blocks are the folds:
  LFW's ``pairs.txt`` layout (``"lfw_blocks"``), which :func:`make_pairs` and
  ``experiments/make_pairs.py`` also write.  Otherwise (e.g. LFW View 1's
  ``pairsDevTrain.txt``, all positives then all negatives, or any filtered
  list) the folds are *stratified* (``"stratified"``): the positives, in file
  order, are cut into k contiguous blocks, the negatives likewise, and fold k
  is the k-th block of each.  Contiguous blocks of such a list would train
  each threshold on a one-sided remainder and lower the accuracy.
* Accuracy thresholds are chosen *exactly* by default (midpoints between
  consecutive distinct distances: the true maximiser of training accuracy);
  ``thresholds=ROC_THRESHOLDS`` chooses on insightface's grid instead, which
  reproduces its ``calculate_roc`` to the last digit.
* Two TARs at a FAR: :func:`tar_at_far`, the in-sample ROC point (threshold =
  an order statistic of *all* impostor distances), and :func:`val_at_far`,
  insightface's cross-validated VAL (threshold interpolated on 9 folds,
  VAL and FAR measured on the 10th, averaged over the folds).

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
    "fold_layout",
    "fold_test_indices",
    "make_pairs",
    "best_threshold",
    "kfold_verification",
    "tar_at_far",
    "val_at_far",
    "far_key",
    "val_key",
    "metrics_json_keys",
    "verification_metrics",
    "reconstruction_protocol",
    "nearest_centroid_agreement",
    "nearest_centroid_labels",
    "class_balanced_agreement",
    "leave_one_out_nearest_centroid",
]

# Above this many candidate pairs, make_pairs samples by rejection instead of
# enumerating every pair.
_ENUMERATE_LIMIT = 2_000_000

# insightface's threshold grids (recognition/.../eval/verification.py, evaluate()):
# accuracy thresholds for calculate_roc, VAL thresholds for calculate_val.
ROC_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)

FOLD_LAYOUTS = ("lfw_blocks", "stratified")


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


def _check_num_folds(num_folds, minimum: int = 2) -> int:
    if isinstance(num_folds, (bool, np.bool_)) or not isinstance(num_folds, (int, np.integer)):
        raise ValueError(f"num_folds must be an integer, got {num_folds!r}")
    if num_folds < minimum:
        raise ValueError(f"num_folds must be >= {minimum}, got {num_folds}")
    return int(num_folds)


def fold_layout(is_same, num_folds: int = 10) -> str:
    """Which folds the k-fold protocol uses on this ordered pair list.

    ``"lfw_blocks"`` when every contiguous block of :func:`fold_slices` holds
    its share of positive pairs (``size * positives / pairs``) within one pair,
    as in LFW's ``pairs.txt`` and the files :func:`make_pairs` orders;
    ``"stratified"`` otherwise (e.g. all positives then all negatives).
    """
    s = _as_bool_array(is_same, "is_same")
    num_folds = _check_num_folds(num_folds, minimum=1)
    n, positives = s.size, int(s.sum())
    if n == 0:
        return "lfw_blocks"
    for fold in fold_slices(n, num_folds):
        share = (fold.stop - fold.start) * positives / n
        if abs(int(s[fold].sum()) - share) >= 1.0:
            return "stratified"
    return "lfw_blocks"


def fold_test_indices(is_same, num_folds: int = 10,
                      layout: str = "auto") -> Tuple[str, List[np.ndarray]]:
    """The k test folds of the verification protocol, as sorted index arrays.

    Args:
      is_same: ``(num_pairs,)`` booleans, in the pair list's order.
      num_folds: k.
      layout: ``"auto"`` (:func:`fold_layout` decides), ``"lfw_blocks"``
        (contiguous blocks of the list, sklearn ``KFold(k, shuffle=False)``)
        or ``"stratified"`` (the positives in list order cut into k contiguous
        blocks as :func:`fold_slices` cuts, extra pairs in the first folds; the
        negatives likewise with their extra pairs in the *last* folds, so fold
        sizes differ by at most one and no fold is empty; fold k is the k-th
        block of each, so a list already in balanced blocks of equal
        positive and negative shares gets the same folds either way).

    Returns:
      ``(layout used, [test indices of fold 0, ..., fold k-1])``.
    """
    s = _as_bool_array(is_same, "is_same")
    num_folds = _check_num_folds(num_folds, minimum=1)
    if layout == "auto":
        layout = fold_layout(s, num_folds)
    if layout not in FOLD_LAYOUTS:
        raise ValueError(f"layout must be 'auto' or one of {FOLD_LAYOUTS}, got {layout!r}")
    if layout == "lfw_blocks":
        return layout, [np.arange(f.start, f.stop) for f in fold_slices(s.size, num_folds)]
    pos, neg = np.flatnonzero(s), np.flatnonzero(~s)
    neg_sizes = [f.stop - f.start for f in fold_slices(neg.size, num_folds)][::-1]
    neg_stops = np.cumsum(neg_sizes)
    neg_blocks = [slice(int(stop - size), int(stop)) for size, stop in zip(neg_sizes, neg_stops)]
    folds = [np.sort(np.concatenate([pos[p], neg[q]]))
             for p, q in zip(fold_slices(pos.size, num_folds), neg_blocks)]
    return layout, folds


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
def best_threshold(distances, is_same, thresholds=None) -> Tuple[float, float]:
    """Threshold maximising verification accuracy.

    A pair is predicted "same" iff ``distance < threshold``.  By default
    (``thresholds=None``) the search is exact: candidates are
    ``min(distances) - 1``, the midpoints between consecutive sorted distinct
    distances, and ``max(distances) + 1``; together they realise every
    possible split of the sorted distances.  Given a grid (e.g.
    :data:`ROC_THRESHOLDS`, insightface's ``np.arange(0, 4, 0.01)``) the best
    grid value is returned instead, as insightface's ``calculate_roc`` picks
    it.  Among thresholds with the best accuracy the smallest is returned.

    Args:
      distances: ``(num_pairs,)`` finite distances.
      is_same: ``(num_pairs,)`` booleans, True for same-identity pairs.
      thresholds: ``None`` (exact search) or a 1-D grid of candidates.

    Returns:
      ``(threshold, accuracy)`` as Python floats.
    """
    d, s = _check_distances(distances, is_same)
    if thresholds is not None:
        grid = _as_float_array(thresholds, "thresholds", ndim=1)
        if grid.size == 0:
            raise ValueError("thresholds is empty")
        tp = np.searchsorted(np.sort(d[s]), grid, side="left")      # positives < t
        fp = np.searchsorted(np.sort(d[~s]), grid, side="left")     # negatives < t
        correct = tp + (int((~s).sum()) - fp)
        i = int(np.argmax(correct))                                   # first = smallest
        return float(grid[i]), float(correct[i]) / d.size
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


def _folds_for(d: np.ndarray, s: np.ndarray, num_folds, layout: str):
    num_folds = _check_num_folds(num_folds)
    if d.size < num_folds:
        raise ValueError(f"need at least num_folds={num_folds} pairs, got {d.size}")
    return fold_test_indices(s, num_folds, layout)


def kfold_verification(distances, is_same, num_folds: int = 10, layout: str = "auto",
                       thresholds=None) -> Dict[str, object]:
    """k-fold verification accuracy, as insightface's ``calculate_roc``.

    For each fold of :func:`fold_test_indices` the threshold is chosen with
    :func:`best_threshold` on the other folds and the accuracy is measured
    on the held-out fold.  With ``thresholds=ROC_THRESHOLDS`` and LFW-block
    folds this is insightface's ``calculate_roc`` (``pca=0``) exactly; the
    default exact search can only raise each fold's training accuracy.

    Returns:
      dict with ``accuracy_mean`` (float), ``accuracy_std`` (population std,
      ddof=0, as insightface's ``np.std``), ``fold_accuracies`` (list of
      floats), ``thresholds`` (list of the per-fold thresholds) and
      ``fold_layout`` (``"lfw_blocks"`` or ``"stratified"``).
    """
    d, s = _check_distances(distances, is_same)
    used, folds = _folds_for(d, s, num_folds, layout)
    accs, thrs = [], []
    for test in folds:
        train = np.ones(d.size, dtype=bool)
        train[test] = False
        thr, _ = best_threshold(d[train], s[train], thresholds=thresholds)
        accs.append(float(np.mean((d[test] < thr) == s[test])))
        thrs.append(thr)
    return {
        "accuracy_mean": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "fold_accuracies": accs,
        "thresholds": thrs,
        "fold_layout": used,
    }


def tar_at_far(distances, is_same, far: float = 1e-3) -> Dict[str, float]:
    """True accept rate at a false accept rate: the in-sample ROC point.

    The threshold is the largest ``t`` such that the fraction of negative
    pairs with ``distance < t`` is at most ``far``.  With ``k =
    floor(far * num_negatives)`` allowed false accepts this is the
    ``(k+1)``-th smallest negative distance (ties are handled because the
    comparison is strict); when ``k = 0`` (including ``far * num_negatives <
    1``) it is the smallest negative distance, i.e. zero false accepts.  When
    every negative may be accepted (``k >= num_negatives``) the threshold is
    ``inf``.  The threshold is set and measured on the same (all) impostor
    pairs; :func:`val_at_far` is the cross-validated alternative.

    Returns:
      dict with ``tar`` (fraction of positive pairs with ``distance < t``),
      ``far`` (achieved false accept rate, ``<=`` the requested one) and
      ``threshold``.
    """
    d, s = _check_distances(distances, is_same)
    far = _check_far(far)
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


def _check_far(far) -> float:
    try:
        far = float(far)
    except (TypeError, ValueError) as err:
        raise ValueError(f"far must be a number, got {far!r}") from err
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be in [0, 1], got {far}")
    return far


def _slinear_at(x: np.ndarray, y: np.ndarray, z: float) -> float:
    """The value at ``z`` of the piecewise-linear interpolant through
    ``(x_i, y_i)``, ``x`` non-decreasing with repeats, ``x[0] <= z <= x[-1]``.

    This is what insightface's ``interpolate.interp1d(far_train, thresholds,
    kind='slinear')`` evaluates with the SciPy it was written for (<= 1.8: a
    degree-1 B-spline with knots ``[x0, x..., x_last]``; SciPy >= 1.9 refuses
    repeated x): the segment from the *last* point with ``x <= z`` to the next
    one, in de Boor's arithmetic; a zero-length last segment gives 0.
    """
    a = int(np.searchsorted(x, z, side="right")) - 1
    a = min(max(a, 0), x.size - 2)
    xa, xb = float(x[a]), float(x[a + 1])
    if xb == xa:
        return 0.0
    w = 1.0 / (xb - xa)
    return 0.0 + float(y[a]) * (w * (xb - z)) + float(y[a + 1]) * (w * (z - xa))


def val_at_far(distances, is_same, far: float = 1e-3, num_folds: int = 10,
               layout: str = "auto", thresholds=None) -> Dict[str, object]:
    """Cross-validated VAL at a FAR, as insightface's ``calculate_val``.

    For each fold of :func:`fold_test_indices`: the false accept rate of the
    *other* folds' impostor pairs is computed at every threshold of the grid
    (``distance < t``), the threshold where it reaches ``far`` is found by
    linear interpolation (0 when no grid threshold reaches ``far``), and the
    held-out fold's VAL (share of its positives accepted) and FAR (share of
    its impostors accepted) are measured there.  VAL and FAR are the means
    over the folds.  A test fold with ``m`` impostor pairs can only realise
    FARs in steps of ``1 / m``, so the achieved FAR says what the VAL stands on.

    Args:
      distances, is_same: as in :func:`kfold_verification`.
      far: the target false accept rate.
      num_folds, layout: as in :func:`fold_test_indices`.
      thresholds: the grid; default :data:`VAL_THRESHOLDS` (insightface's
        ``np.arange(0, 4, 0.001)`` for squared L2 of unit vectors).

    Returns:
      dict with ``val`` (mean), ``val_std`` (population std), ``far`` (mean
      achieved on the test folds), ``fold_vals``, ``fold_fars``,
      ``thresholds`` (per fold), ``impostor_pairs_per_fold`` (the smallest
      test fold's impostor count) and ``fold_layout``; ``val``, ``val_std``
      and ``far`` are None when a test fold lacks positive or impostor pairs
      (the rates are undefined there).
    """
    d, s = _check_distances(distances, is_same)
    far = _check_far(far)
    grid = np.sort(_as_float_array(VAL_THRESHOLDS if thresholds is None else thresholds,
                                   "thresholds", ndim=1))
    if grid.size < 2:
        raise ValueError("thresholds needs at least two values to interpolate")
    used, folds = _folds_for(d, s, num_folds, layout)
    out = {"fold_layout": used, "val": None, "val_std": None, "far": None,
           "fold_vals": [], "fold_fars": [], "thresholds": [],
           "impostor_pairs_per_fold": int(min(int((~s[t]).sum()) for t in folds))}
    if any(s[t].all() or not s[t].any() for t in folds):
        return out
    for test in folds:
        train = np.ones(d.size, dtype=bool)
        train[test] = False
        train_neg = np.sort(d[train & ~s])
        far_train = np.searchsorted(train_neg, grid, side="left") / train_neg.size
        thr = _slinear_at(far_train, grid, far) if far_train.max() >= far else 0.0
        dt, st = d[test], s[test]
        out["fold_vals"].append(float(np.sum((dt < thr) & st)) / float(st.sum()))
        out["fold_fars"].append(float(np.sum((dt < thr) & ~st)) / float((~st).sum()))
        out["thresholds"].append(float(thr))
    out["val"] = float(np.mean(out["fold_vals"]))
    out["val_std"] = float(np.std(out["fold_vals"]))
    out["far"] = float(np.mean(out["fold_fars"]))
    return out


def far_key(far: float) -> str:
    """Dictionary key of the TAR at ``far``, e.g. ``tar_at_far_1e-03``."""
    return f"tar_at_far_{far:.0e}"


def val_key(far: float) -> str:
    """Dictionary key of the cross-validated VAL at ``far``, e.g. ``val_cv_at_far_1e-03``."""
    return f"val_cv_at_far_{far:.0e}"


def _metrics_from_distances(d: np.ndarray, s: np.ndarray, num_folds: int,
                            fars: Sequence[float], layout: str = "auto",
                            thresholds=None) -> Dict[str, object]:
    kf = kfold_verification(d, s, num_folds=num_folds, layout=layout, thresholds=thresholds)
    out = {"accuracy": kf["accuracy_mean"], "accuracy_std": kf["accuracy_std"],
           "fold_layout": kf["fold_layout"], "num_folds": int(num_folds),
           "tar_at_far_impostor_pairs": int((~s).sum())}
    for far in fars:
        roc = tar_at_far(d, s, far=far)
        out[far_key(far)] = roc["tar"]
        out[far_key(far) + "_achieved_far"] = roc["far"]
    for far in fars:
        val = val_at_far(d, s, far=far, num_folds=num_folds, layout=kf["fold_layout"])
        out[val_key(far)] = val["val"]
        out[val_key(far) + "_std"] = val["val_std"]
        out[val_key(far) + "_achieved_far"] = val["far"]
        out["val_cv_impostor_pairs_per_fold"] = val["impostor_pairs_per_fold"]
    return out


def verification_metrics(emb_a, emb_b, is_same, num_folds: int = 10,
                         fars: Sequence[float] = (1e-3,), layout: str = "auto",
                         thresholds=None) -> Dict[str, object]:
    """Standard verification metrics for pairs of embeddings.

    Args:
      emb_a, emb_b: ``(num_pairs, dim)`` embeddings of the two sides of each pair.
      is_same: ``(num_pairs,)`` booleans.
      num_folds, layout: folds of :func:`kfold_verification` and :func:`val_at_far`.
      fars: false accept rates for :func:`tar_at_far` and :func:`val_at_far`.
      thresholds: accuracy threshold search of :func:`best_threshold`
        (None: exact; :data:`ROC_THRESHOLDS`: insightface's grid).

    Returns:
      flat dict: ``accuracy`` (mean k-fold accuracy), ``accuracy_std`` (its
      population std), ``fold_layout``, ``num_folds``; the in-sample ROC TAR
      ``tar_at_far_1e-03`` with ``tar_at_far_1e-03_achieved_far`` and
      ``tar_at_far_impostor_pairs`` (all negatives); the cross-validated
      ``val_cv_at_far_1e-03`` with ``_std`` and ``_achieved_far`` and
      ``val_cv_impostor_pairs_per_fold`` (one entry per far for the rates).
    """
    a, b = _check_pair_embeddings(emb_a, emb_b)
    s = _as_bool_array(is_same, "is_same")
    if s.shape[0] != a.shape[0]:
        raise ValueError(f"is_same has {s.shape[0]} entries but there are {a.shape[0]} pairs")
    return _metrics_from_distances(pair_distances(a, b), s, num_folds, fars, layout, thresholds)


def metrics_json_keys(result: Dict[str, object], prefix: str) -> Dict[str, object]:
    """The keys of a :func:`verification_metrics` result as a report writes them:
    ``accuracy`` -> ``<prefix>verification_accuracy``, every rate and count
    ``<prefix><key>``; ``fold_layout`` and ``num_folds`` are left to the caller
    (one per pair list, shared by the real and reconstruction rows)."""
    out = {}
    for key, value in result.items():
        if key in ("fold_layout", "num_folds"):
            continue
        name = "verification_" + key if key.startswith("accuracy") else key
        out[prefix + name] = value
    return out


def reconstruction_protocol(real_embeddings, recon_embeddings, idx_a, idx_b, is_same,
                            num_folds: int = 10, fars: Sequence[float] = (1e-3,),
                            layout: str = "auto", thresholds=None) -> Dict[str, object]:
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
      num_folds, fars, layout, thresholds: as in :func:`verification_metrics`.

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
    return verification_metrics(emb_a, emb_b, s, num_folds=num_folds, fars=fars, layout=layout,
                                thresholds=thresholds)


def nearest_centroid_labels(embeddings, labels, centroid_embeddings,
                            centroid_labels) -> np.ndarray:
    """The label of each row's nearest class centroid (by cosine); see
    `nearest_centroid_agreement` for the arguments, checks and tie rule."""
    return _nearest_centroid(embeddings, labels, centroid_embeddings, centroid_labels)[1]


def class_balanced_agreement(labels, predicted) -> float:
    """Mean over classes of the share of each class's rows with ``predicted == labels``.

    The plain share (``nearest_centroid_agreement``) weighs a class by its number of rows, so a
    face set where one person has hundreds of photos and most have one or two is measured
    mostly on that person; this weighs every class once.

    Raises:
      ValueError: if the two are not 1-D of one length, or are empty.
    """
    labels = np.asarray(labels)
    predicted = np.asarray(predicted)
    if labels.ndim != 1 or labels.shape != predicted.shape:
        raise ValueError(f"labels and predicted must be 1-D of one length, got shapes "
                         f"{labels.shape} and {predicted.shape}")
    if labels.size == 0:
        raise ValueError("labels must be non-empty")
    classes, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(-1)
    hits = np.bincount(inverse, weights=(predicted == labels).astype(np.float64),
                       minlength=classes.size)
    return float(np.mean(hits / np.bincount(inverse, minlength=classes.size)))


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


def leave_one_out_nearest_centroid(probes, embeddings, labels):
    """Rank-1 with each probe's own row left out of its own class's centroid.

    Row ``i`` of ``probes`` is matched against class centroids (the mean of the normalised
    ``embeddings`` of each class, as in ``nearest_centroid_agreement``) where the centroid of
    its own class ``labels[i]`` is made without ``embeddings[i]``. With ``probes`` the gallery's
    own rows this is leave-one-out identification; the plain rule scores a class with one row
    by matching that row to itself, so on LFW-style sets (most people have one or two photos)
    it is a ceiling, not an identification rate. With ``probes`` the embeddings of images made
    from row ``i`` (a reconstruction), it asks whether they point to the person's *other*
    images. Rows of classes with a single row have no centroid left and are not probed; they
    stay in the gallery as other people. Ties go to the lower class label.

    Args:
      probes: ``(n, dim)``; row ``i`` belongs to ``embeddings[i]``.
      embeddings: ``(n, dim)`` gallery rows.
      labels: ``(n,)`` class labels of both.

    Returns:
      (probed, predicted): the indices of the probed rows (those of classes with two or more
      rows, ascending) and their nearest centroid's label.

    Raises:
      ValueError: on mismatched shapes, empty or non-finite input, or when no class has two
        rows (nothing to probe).
    """
    q = _as_float_array(probes, "probes", ndim=2)
    g = _as_float_array(embeddings, "embeddings", ndim=2)
    lab = np.asarray(labels)
    if q.shape != g.shape:
        raise ValueError(f"probes and embeddings must have one shape, got {q.shape} and "
                         f"{g.shape}")
    if lab.ndim != 1 or lab.shape[0] != g.shape[0]:
        raise ValueError(f"labels must be 1-D with {g.shape[0]} entries, got shape {lab.shape}")
    if g.shape[0] == 0:
        raise ValueError("embeddings must be non-empty")
    classes, inv, counts, unit, sums = _class_sums(g, lab)
    probed = np.flatnonzero(counts[inv] >= 2)
    if probed.size == 0:
        raise ValueError("no class has two rows: leave-one-out rank-1 has nothing to probe")
    centroids = l2_normalize(sums / counts[:, None])
    qn = l2_normalize(q[probed])
    scores = qn @ centroids.T
    own = inv[probed]
    rest = l2_normalize((sums[own] - unit[probed]) / (counts[own] - 1)[:, None])
    scores[np.arange(probed.size), own] = np.sum(qn * rest, axis=1)
    return probed, classes[np.argmax(scores, axis=1)]


def _class_sums(embeddings, labels):
    """(sorted classes, each row's class index, rows per class, the L2-normalised rows, their
    sum per class): what a class centroid (the normalised mean of normalised rows) is made of."""
    classes, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(-1)
    unit = l2_normalize(embeddings)
    sums = np.zeros((classes.size, embeddings.shape[1]))
    np.add.at(sums, inv, unit)
    return classes, inv, np.bincount(inv, minlength=classes.size), unit, sums


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
    classes, _, counts, _, sums = _class_sums(c, cl)
    missing = ~np.isin(ql, classes)
    if missing.any():
        raise ValueError(f"labels {np.unique(ql[missing])[:10].tolist()} have no centroid "
                         f"in centroid_labels")
    centroids = l2_normalize(sums / counts[:, None])
    nearest = np.argmax(l2_normalize(q) @ centroids.T, axis=1)
    return ql, classes[nearest]
