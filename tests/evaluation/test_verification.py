"""Tests of dibigan_tf.evaluation.verification against hand-computed values."""
import math

import numpy as np
import pytest

from dibigan_tf.evaluation import verification as V


# ---------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------
def test_l2_normalize_hand_values():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    # |(3,4)| = 5 -> (0.6, 0.8); zero row stays zero; (0,-2) -> (0,-1).
    np.testing.assert_allclose(V.l2_normalize(x), [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    # axis=0: column norms are |(3,0,0)| = 3 and |(4,0,-2)| = sqrt(20).
    np.testing.assert_allclose(V.l2_normalize(x, axis=0),
                               [[1.0, 4 / math.sqrt(20)], [0.0, 0.0], [0.0, -2 / math.sqrt(20)]])


def test_pair_distances_hand_values():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
    b = np.array([[0.0, 5.0], [-2.0, 0.0], [6.0, 8.0], [1.0, 1.0]])
    # orthogonal -> 2; opposite -> 4; same direction -> 0;
    # 45 degrees: 2 - 2 cos(45) = 2 - sqrt(2).
    np.testing.assert_allclose(V.pair_distances(a, b), [2.0, 4.0, 0.0, 2 - math.sqrt(2)],
                               atol=1e-12)


def test_cosine_similarity_rows_hand_values():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0], [1.0, 0.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0], [-3.0, -4.0], [1.0, math.sqrt(3)]])
    # 90 deg -> 0, same dir -> 1, opposite -> -1, 60 deg -> 0.5.
    np.testing.assert_allclose(V.cosine_similarity_rows(a, b), [0.0, 1.0, -1.0, 0.5], atol=1e-12)


# ---------------------------------------------------------------------------
# best_threshold
# ---------------------------------------------------------------------------
def test_best_threshold_six_distances_smallest_tie():
    d = np.array([0.2, 0.5, 0.9, 1.1, 1.4, 1.8])
    s = np.array([True, True, False, True, False, False])
    # m = number of smallest distances predicted "same"; correct = TP + TN:
    # m=0: 0+3=3  m=1: 1+3=4  m=2: 2+3=5  m=3: 2+2=4
    # m=4: 3+2=5  m=5: 3+1=4  m=6: 3+0=3
    # best 5/6 at m=2 (t=(0.5+0.9)/2=0.7) and m=4 (t=1.25): smallest is 0.7.
    thr, acc = V.best_threshold(d, s)
    assert thr == pytest.approx(0.7)
    assert acc == pytest.approx(5 / 6)
    # Order of the pairs is irrelevant.
    perm = np.array([4, 0, 5, 2, 1, 3])
    thr2, acc2 = V.best_threshold(d[perm], s[perm])
    assert (thr2, acc2) == pytest.approx((0.7, 5 / 6))


def test_best_threshold_below_min_and_above_max():
    # Ties in distances: d = 0.3 (T, F), 0.6 (T, F).
    # m=0: 0+2=2, m=1: 1+1=2, m=2: 2+0=2 -> all tie, smallest is below the min.
    thr, acc = V.best_threshold([0.3, 0.3, 0.6, 0.6], [True, False, True, False])
    assert thr < 0.3
    assert acc == pytest.approx(0.5)
    # All positive: best is to accept everything -> threshold above the max.
    thr, acc = V.best_threshold([0.3, 0.1, 0.6], [True, True, True])
    assert thr > 0.6
    assert acc == 1.0


def test_best_threshold_is_strict_less_than():
    # Two pairs at the same distance with different labels can never both be
    # right: 0.5 (T), 0.5 (F), 1.0 (F).
    # m=0: 0+2=2; m=1 (0.5 group same): TP1 + TN1 = 2; m=2: 1+0=1
    # -> tie between m=0 and m=1, smallest threshold: below the min.
    thr, acc = V.best_threshold([0.5, 0.5, 1.0], [True, False, False])
    assert thr < 0.5
    assert acc == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------
# kfold_verification
# ---------------------------------------------------------------------------
KF_D = np.array([0.1, 0.5, 0.9,    # fold 0
                 0.2, 0.7, 1.0,    # fold 1
                 0.4, 0.6, 0.8])   # fold 2
KF_S = np.array([True, True, False,
                 True, False, False,
                 True, False, True])


def test_kfold_three_folds_hand_values():
    # Fold 0 held out; train = folds 1+2 sorted:
    #   0.2T 0.4T 0.6F 0.7F 0.8T 1.0F  -> best m=2 (5/6), t = 0.5
    #   test fold 0 with t=0.5: 0.1 same ok, 0.5 not < 0.5 -> wrong, 0.9 ok -> 2/3
    # Fold 1 held out; train = folds 0+2 sorted:
    #   0.1T 0.4T 0.5T 0.6F 0.8T 0.9F  -> m=3: 3+2=5, m=5: 4+1=5 -> smallest t=0.55
    #   test fold 1: 0.2 ok, 0.7 ok, 1.0 ok -> 1
    # Fold 2 held out; train = folds 0+1 sorted:
    #   0.1T 0.2T 0.5T 0.7F 0.9F 1.0F  -> m=3 perfect, t = 0.6
    #   test fold 2: 0.4 ok, 0.6 (not < 0.6, F) ok, 0.8 (T) wrong -> 2/3
    # mean = 7/9; population std = sqrt(((1/9)^2 + (2/9)^2 + (1/9)^2) / 3) = sqrt(2)/9
    res = V.kfold_verification(KF_D, KF_S, num_folds=3)
    assert res["fold_accuracies"] == pytest.approx([2 / 3, 1.0, 2 / 3])
    assert res["thresholds"] == pytest.approx([0.5, 0.55, 0.6])
    assert res["accuracy_mean"] == pytest.approx(7 / 9)
    assert res["accuracy_std"] == pytest.approx(math.sqrt(2) / 9)
    assert isinstance(res["fold_accuracies"], list) and isinstance(res["thresholds"], list)


def test_kfold_two_folds_hand_values():
    d = np.array([0.1, 0.3, 0.8, 1.2,   # fold 0
                  0.2, 0.9, 0.6, 1.5])  # fold 1
    s = np.array([True, True, False, False,
                  True, True, False, False])
    # Fold 0 held out, train fold 1 sorted: 0.2T 0.6F 0.9T 1.5F
    #   m=0: 2, m=1: 1+2=3, m=2: 1+1=2, m=3: 2+1=3, m=4: 2 -> t=(0.2+0.6)/2=0.4
    #   test fold 0: 0.1 ok, 0.3 ok, 0.8 ok, 1.2 ok -> 1.0
    # Fold 1 held out, train fold 0 sorted: 0.1T 0.3T 0.8F 1.2F -> m=2 perfect,
    #   t = (0.3+0.8)/2 = 0.55; test fold 1: 0.2 ok, 0.9 (T) wrong, 0.6 ok, 1.5 ok -> 0.75
    res = V.kfold_verification(d, s, num_folds=2)
    assert res["fold_accuracies"] == pytest.approx([1.0, 0.75])
    assert res["thresholds"] == pytest.approx([0.4, 0.55])
    assert res["accuracy_mean"] == pytest.approx(0.875)
    assert res["accuracy_std"] == pytest.approx(0.125)


def test_fold_slices_like_sklearn_kfold():
    # sklearn KFold(3) on 10 items: sizes 4, 3, 3.
    assert V.fold_slices(10, 3) == [slice(0, 4), slice(4, 7), slice(7, 10)]
    assert V.fold_slices(6, 2) == [slice(0, 3), slice(3, 6)]


def test_kfold_rejects_too_few_pairs():
    with pytest.raises(ValueError, match="num_folds"):
        V.kfold_verification([0.1, 0.2], [True, False], num_folds=3)


# ---------------------------------------------------------------------------
# tar_at_far
# ---------------------------------------------------------------------------
TAR_NEG = [0.3, 0.5, 0.5, 0.5, 0.9, 1.2, 1.5, 1.6, 1.8, 2.0]   # 10 negatives
TAR_POS = [0.1, 0.2, 0.4, 0.5, 0.7, 1.0]                       # 6 positives


def _tar(far):
    d = np.array(TAR_POS + TAR_NEG)
    s = np.array([True] * len(TAR_POS) + [False] * len(TAR_NEG))
    return V.tar_at_far(d, s, far=far)


def test_tar_at_far_one_false_accept():
    # far=0.1 -> 1 false accept allowed; t = 2nd smallest negative = 0.5,
    # negatives < 0.5: {0.3} -> far 0.1; positives < 0.5: 0.1 0.2 0.4 -> 3/6.
    r = _tar(0.1)
    assert r == pytest.approx({"tar": 0.5, "far": 0.1, "threshold": 0.5})


def test_tar_at_far_with_ties():
    # far=0.3 -> 3 false accepts allowed, but 0.5 is tied 3 times: any t > 0.5
    # accepts 4 negatives (> 3), so t = 0.5, achieved far = 1/10, TAR = 3/6.
    r = _tar(0.3)
    assert r == pytest.approx({"tar": 0.5, "far": 0.1, "threshold": 0.5})
    # far=0.4 -> 4 allowed: t = 5th smallest = 0.9; negatives < 0.9: 4 -> far 0.4;
    # positives < 0.9: 0.1 0.2 0.4 0.5 0.7 -> 5/6.
    r = _tar(0.4)
    assert r == pytest.approx({"tar": 5 / 6, "far": 0.4, "threshold": 0.9})


def test_tar_at_far_below_one_negative():
    # far * 10 = 0.5 < 1 -> zero false accepts: t = min negative = 0.3,
    # positives < 0.3: 0.1 0.2 -> 2/6.
    r = _tar(0.05)
    assert r == pytest.approx({"tar": 2 / 6, "far": 0.0, "threshold": 0.3})
    assert _tar(1e-3) == r


def test_tar_at_far_one_accepts_everything():
    r = _tar(1.0)
    assert r["tar"] == 1.0 and r["far"] == 1.0 and r["threshold"] == math.inf


def test_tar_at_far_float_rounding_of_allowed_count():
    # 1e-3 * 3000 must count as 3 allowed false accepts (not 2).
    neg = np.arange(3000) / 1000.0 + 1.0       # 1.000, 1.001, ...
    pos = np.array([1.0025, 1.0035])
    d = np.concatenate([pos, neg])
    s = np.array([True, True] + [False] * 3000)
    r = V.tar_at_far(d, s, far=1e-3)
    # t = 4th smallest negative = 1.003: negatives < t: 3 -> far 1e-3; pos < t: 1.0025 -> 1/2.
    assert r == pytest.approx({"tar": 0.5, "far": 1e-3, "threshold": 1.003})


# ---------------------------------------------------------------------------
# verification_metrics and reconstruction protocol
# ---------------------------------------------------------------------------
E = {"A": [1.0, 0.0], "B": [0.0, 1.0], "C": [-1.0, 0.0], "D": [0.0, -1.0]}
# Images 0..7: identities A A B B C C D D.
REAL = np.array([E["A"], E["A"], E["B"], E["B"], E["C"], E["C"], E["D"], E["D"]])
# Two folds of 4 pairs: 2 positives then 2 negatives each.
IDX_A = np.array([0, 2, 0, 4,   4, 6, 1, 5])
IDX_B = np.array([1, 3, 2, 6,   5, 7, 3, 7])
SAME = np.array([True, True, False, False, True, True, False, False])
# Real distances: positives 0, negatives (orthogonal identities) 2 -> accuracy 1, TAR 1.


def test_verification_metrics_keys_and_values():
    # emb_a of pair 0 is B instead of A: distances
    #   fold 0: 2(T) 0(T) 2(F) 2(F);  fold 1: 0(T) 0(T) 2(F) 2(F)
    # Fold 0 held out: train fold 1 separable, smallest best t=1.0;
    #   test: 2(T) wrong, others right -> 3/4.
    # Fold 1 held out: train fold 0: m=0: 2, m=1: 1+2=3, m=2: 2+0=2 -> t=1.0 -> test 4/4.
    # accuracy 0.875, std 0.125. TAR: 4 negatives all at 2.0, far 1e-3 and 1e-4
    # -> zero false accepts, t=2.0, positives < 2: 3/4.
    emb_a = REAL[IDX_A].copy()
    emb_a[0] = E["B"]
    res = V.verification_metrics(emb_a, REAL[IDX_B], SAME, num_folds=2, fars=(1e-3, 1e-4))
    rates = {f"{name}_at_far_{f}{end}" for name in ("tar", "val_cv") for f in ("1e-03", "1e-04")
             for end in ("", "_achieved_far")}
    assert set(res) == {"accuracy", "accuracy_std", "fold_layout", "num_folds",
                        "tar_at_far_impostor_pairs", "val_cv_impostor_pairs_per_fold",
                        "val_cv_at_far_1e-03_std", "val_cv_at_far_1e-04_std"} | rates
    assert res["fold_layout"] == "lfw_blocks" and res["num_folds"] == 2
    assert res["accuracy"] == pytest.approx(0.875)
    assert res["accuracy_std"] == pytest.approx(0.125)
    assert res["tar_at_far_1e-03"] == pytest.approx(0.75)
    assert res["tar_at_far_1e-04"] == pytest.approx(0.75)
    assert res["tar_at_far_1e-03_achieved_far"] == 0.0 and res["tar_at_far_impostor_pairs"] == 4
    # Cross-validated VAL: each fold's threshold is interpolated on the other fold's two
    # impostors (both at 2.0) between the last grid value with FAR 0 (2.0) and the next (2.001,
    # FAR 1): 2.000001, which accepts the test fold's impostors too. Achieved FAR 1 on 2
    # impostors per fold: the VAL of 1.0 means nothing, and the keys say so.
    assert res["val_cv_at_far_1e-03"] == 1.0 and res["val_cv_at_far_1e-03_achieved_far"] == 1.0
    assert res["val_cv_impostor_pairs_per_fold"] == 2


def _core(res):
    return {k: res[k] for k in ("accuracy", "accuracy_std", "tar_at_far_1e-03")}


def test_reconstruction_protocol_perfect_reconstruction_equals_real():
    real = V.verification_metrics(REAL[IDX_A], REAL[IDX_B], SAME, num_folds=2)
    assert _core(real) == pytest.approx({"accuracy": 1.0, "accuracy_std": 0.0,
                                         "tar_at_far_1e-03": 1.0})
    # Perfect reconstructions (scale does not matter after L2 normalisation).
    res = V.reconstruction_protocol(REAL, 3.0 * REAL, IDX_A, IDX_B, SAME, num_folds=2)
    assert _core(res) == pytest.approx(_core(real))


def test_reconstruction_protocol_bad_reconstruction_lowers_accuracy():
    # Reconstruction of image 0 looks like identity B.  Image 0 is idx_a of the
    # positive pair (0,1) and of the negative pair (0,2).  Only the positive pair
    # changes: distance 0 -> 2; the negative (0,2) stays real (distance 2; were
    # it replaced it would become 0).  Same distances as
    # test_verification_metrics_keys_and_values -> accuracy 0.875, TAR 0.75.
    recon = REAL.copy()
    recon[0] = E["B"]
    res = V.reconstruction_protocol(REAL, recon, IDX_A, IDX_B, SAME, num_folds=2)
    assert _core(res) == pytest.approx({"accuracy": 0.875, "accuracy_std": 0.125,
                                        "tar_at_far_1e-03": 0.75})


def test_reconstruction_protocol_keeps_second_image_and_negatives_real():
    # Garbage reconstructions of every image that is never idx_a of a positive
    # pair (1, 3, 5, 7 are idx_b; 1, 5 are idx_a only in negatives) -> unchanged.
    recon = REAL.copy()
    recon[[1, 3, 5, 7]] = [[0.7, -0.7], [-1.0, 0.1], [0.2, 0.9], [1.0, 1.0]]
    res = V.reconstruction_protocol(REAL, recon, IDX_A, IDX_B, SAME, num_folds=2)
    assert _core(res) == pytest.approx({"accuracy": 1.0, "accuracy_std": 0.0,
                                        "tar_at_far_1e-03": 1.0})


def test_reconstruction_protocol_validates():
    with pytest.raises(ValueError, match="same shape"):
        V.reconstruction_protocol(REAL, REAL[:7], IDX_A, IDX_B, SAME, num_folds=2)
    with pytest.raises(ValueError, match="idx_b"):
        V.reconstruction_protocol(REAL, REAL, IDX_A, IDX_B + 1, SAME, num_folds=2)
    bad = REAL.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="recon_embeddings contains NaN"):
        V.reconstruction_protocol(REAL, bad, IDX_A, IDX_B, SAME, num_folds=2)


# ---------------------------------------------------------------------------
# make_pairs
# ---------------------------------------------------------------------------
LABELS12 = np.repeat([0, 1, 2, 3], 3)   # 4 ids x 3 images: 4*C(3,2)=12 positives, 66-12=54 negatives


def _check_pairs(labels, a, b, s, n_pos, n_neg):
    labels = np.asarray(labels)
    assert a.dtype.kind == "i" and b.dtype.kind == "i" and s.dtype == bool
    assert len(a) == len(b) == len(s) == n_pos + n_neg
    assert s.sum() == n_pos
    assert np.all(a != b)
    assert np.all((labels[a] == labels[b]) == s)
    unordered = {(min(i, j), max(i, j)) for i, j in zip(a.tolist(), b.tolist())}
    assert len(unordered) == len(a)


def test_make_pairs_counts_and_fold_balance():
    a, b, s = V.make_pairs(LABELS12, 10, 20, seed=3)
    _check_pairs(LABELS12, a, b, s, 10, 20)
    # 30 pairs, 10 folds of 3: each fold = 1 positive then 2 negatives.
    assert s.tolist() == [True, False, False] * 10


def test_make_pairs_all_available_pairs():
    a, b, s = V.make_pairs(LABELS12, 12, 54, seed=0, num_folds=6)
    _check_pairs(LABELS12, a, b, s, 12, 54)
    for fold in V.fold_slices(66, 6):      # 11 pairs: 2 positives then 9 negatives
        assert s[fold].tolist() == [True] * 2 + [False] * 9


def test_make_pairs_uneven_fold_balance():
    a, b, s = V.make_pairs(LABELS12, 7, 16, seed=1)
    _check_pairs(LABELS12, a, b, s, 7, 16)
    per_fold = []
    for fold in V.fold_slices(23, 10):
        block = s[fold]
        k = int(block.sum())
        assert block.tolist() == [True] * k + [False] * (len(block) - k)
        per_fold.append(k)
    assert sum(per_fold) == 7 and max(per_fold) - min(per_fold) <= 1


def test_make_pairs_deterministic_per_seed():
    r1 = V.make_pairs(LABELS12, 10, 20, seed=5)
    r2 = V.make_pairs(LABELS12, 10, 20, seed=5)
    r3 = V.make_pairs(LABELS12, 10, 20, seed=6)
    for x, y in zip(r1, r2):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(r1, r3))


def test_make_pairs_impossible_requests():
    with pytest.raises(ValueError, match="positive"):
        V.make_pairs(LABELS12, 13, 10, seed=0)
    with pytest.raises(ValueError, match="negative"):
        V.make_pairs(LABELS12, 10, 55, seed=0)
    with pytest.raises(ValueError, match="positive"):
        V.make_pairs([0, 1, 2, 3], 1, 1, seed=0)      # every label unique
    with pytest.raises(ValueError, match="negative"):
        V.make_pairs([7, 7, 7], 1, 1, seed=0)         # a single label


def test_make_pairs_string_labels():
    labels = np.array(["ann", "bob", "ann", "cat", "bob"])
    a, b, s = V.make_pairs(labels, 2, 8, seed=0, num_folds=2)
    _check_pairs(labels, a, b, s, 2, 8)
    assert s.tolist() == [True] + [False] * 4 + [True] + [False] * 4


def test_make_pairs_large_uses_sampling_and_stays_valid():
    # 2 ids x 2100 images: 4.4M positive and 4.4M negative pairs (sampling path).
    labels = np.repeat([10, 20], 2100)
    a, b, s = V.make_pairs(labels, 3000, 3000, seed=0)
    _check_pairs(labels, a, b, s, 3000, 3000)
    assert s.tolist() == ([True] * 300 + [False] * 300) * 10


def test_make_pairs_rejection_samplers_are_uniform(monkeypatch):
    # Force the rejection samplers. labels 0 0 0 1 1 2:
    # positives {01,02,12,34} (4 pairs), negatives 15-4 = 11 pairs; each draw
    # should pick each pair with probability 1/4 resp. 1/11.
    monkeypatch.setattr(V, "_ENUMERATE_LIMIT", 0)
    labels = np.array([0, 0, 0, 1, 1, 2])
    pos, neg = {}, {}
    trials = 2200
    for seed in range(trials):
        a, b, s = V.make_pairs(labels, 1, 1, seed=seed, num_folds=1)
        _check_pairs(labels, a, b, s, 1, 1)
        for i, j, same in zip(a, b, s):
            key = (min(i, j), max(i, j))
            (pos if same else neg)[key] = (pos if same else neg).get(key, 0) + 1
    assert len(pos) == 4 and len(neg) == 11
    assert all(abs(c - trials / 4) < 90 for c in pos.values()), pos       # sd ~ 20
    assert all(abs(c - trials / 11) < 60 for c in neg.values()), neg      # sd ~ 13


# ---------------------------------------------------------------------------
# nearest_centroid_agreement
# ---------------------------------------------------------------------------
def test_nearest_centroid_agreement_2d_hand_example():
    # Centroids (per-row L2 normalisation, then mean, then normalise):
    #   label 0: (1,0), (0,1)        -> 45 deg
    #   label 1: (-1,0), (0,-10)     -> 225 deg (unnormalised mean would be ~264 deg)
    #   label 2: (3,-3)              -> 315 deg
    cent = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -10.0], [3.0, -3.0]])
    cent_lab = np.array([0, 0, 1, 1, 2])
    q = np.array([[2.0, 1.0],     # 26.6 deg -> nearest 45 (label 0), label 0: agree
                  [0.09, -1.0],   # 275.1 deg -> 315 is 39.9 away, 225 is 50.1 -> 2: agree
                  [-1.0, -0.5],   # 206.6 deg -> 225 (label 1), label 1: agree
                  [1.0, 0.1]])    # 5.7 deg -> 45 is 39.3 away, 315 is 50.7 -> 0, label 2: no
    q_lab = np.array([0, 2, 1, 2])
    # 3 of 4 agree.
    assert V.nearest_centroid_agreement(q, q_lab, cent, cent_lab) == pytest.approx(0.75)


def test_class_balanced_agreement_hand_example():
    # "a": 3 of 4 right, "b": 0 of 1, "c": 2 of 2 -> plain 5/7, balanced (0.75 + 0 + 1) / 3
    labels = ["a", "a", "a", "a", "b", "c", "c"]
    predicted = ["a", "a", "a", "c", "a", "c", "c"]
    assert V.class_balanced_agreement(labels, predicted) == pytest.approx(1.75 / 3)
    with pytest.raises(ValueError, match="one length"):
        V.class_balanced_agreement(labels, predicted[:-1])
    with pytest.raises(ValueError, match="non-empty"):
        V.class_balanced_agreement([], [])


def _degrees(*angles):
    return np.array([[np.cos(np.radians(a)), np.sin(np.radians(a))] for a in angles])


def test_leave_one_out_hand_example():
    # a: 0 and 90 deg; b: one photo at 30 deg; c: 180, 190, 200 deg.
    #   a at 0 deg: its own centroid without it is 90 deg (cos 0), b is 30 deg away -> b
    #   a at 90 deg: own centroid 0 deg (cos 0), b 60 deg away (cos 0.5) -> b
    #   (the plain rule puts a's centroid at 45 deg: 90 deg -> a, 0 deg -> b, and b -> b itself)
    #   c at 180 deg: own centroid 195 deg, 15 deg away -> c; likewise 190 and 200 deg
    #   b has no other photo: not probed, but stays in the gallery
    gallery = _degrees(0, 90, 30, 180, 190, 200)
    labels = np.array(["a", "a", "b", "c", "c", "c"])
    probed, predicted = V.leave_one_out_nearest_centroid(gallery, gallery, labels)
    assert probed.tolist() == [0, 1, 3, 4, 5]
    assert predicted.tolist() == ["b", "b", "c", "c", "c"]
    plain = V.nearest_centroid_labels(gallery, labels, gallery, labels)
    assert plain.tolist() == ["b", "a", "b", "c", "c", "c"]
    # a reconstruction of a's 0-deg photo that lies at 85 deg: a's other photo (90) is nearest
    probes = gallery.copy()
    probes[0] = _degrees(85)[0]
    assert V.leave_one_out_nearest_centroid(probes, gallery, labels)[1][0] == "a"


def test_leave_one_out_equals_removing_the_row():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 6, size=40)
    labels[:6] = np.arange(6)                       # every class present
    labels[6] = 6                                   # one class of a single row
    gallery = rng.standard_normal((41, 5))[:40] + labels[:, None] * 0.3
    probes = gallery + 0.5 * rng.standard_normal(gallery.shape)
    probed, predicted = V.leave_one_out_nearest_centroid(probes, gallery, labels)
    expected = []
    for i in probed:
        keep = np.arange(len(labels)) != i
        expected.append(V.nearest_centroid_labels(probes[i:i + 1], labels[i:i + 1],
                                                  gallery[keep], labels[keep])[0])
    assert 6 not in probed and probed.size == 39
    np.testing.assert_array_equal(predicted, expected)


def test_leave_one_out_refusals():
    with pytest.raises(ValueError, match="nothing to probe"):
        V.leave_one_out_nearest_centroid(np.eye(3), np.eye(3), [0, 1, 2])
    with pytest.raises(ValueError, match="one shape"):
        V.leave_one_out_nearest_centroid(np.eye(3), np.eye(3)[:2], [0, 0])
    with pytest.raises(ValueError, match="labels must be 1-D"):
        V.leave_one_out_nearest_centroid(np.eye(3), np.eye(3), [0, 0])
    with pytest.raises(ValueError, match="probes contains NaN"):
        V.leave_one_out_nearest_centroid(np.full((2, 2), np.nan), np.eye(2), [0, 0])


def test_nearest_centroid_agreement_missing_label():
    with pytest.raises(ValueError, match="no centroid"):
        V.nearest_centroid_agreement([[1.0, 0.0]], [5], [[1.0, 0.0]], [0])


# ---------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------
def test_nan_and_inf_refused():
    good = np.ones((3, 2))
    bad = good.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="emb_b contains NaN"):
        V.pair_distances(good, bad)
    with pytest.raises(ValueError, match="distances contains Inf"):
        V.best_threshold([0.1, np.inf, 0.3], [True, False, True])
    with pytest.raises(ValueError, match="distances contains NaN"):
        V.tar_at_far([0.1, np.nan, 0.3], [True, False, True])
    with pytest.raises(ValueError, match="embeddings contains NaN"):
        V.nearest_centroid_agreement(bad, [0, 0, 0], good, [0, 0, 0])
    with pytest.raises(ValueError, match="emb_a contains NaN"):
        V.verification_metrics(bad, good, [True, False, True], num_folds=3)


def test_shape_mismatches_refused():
    with pytest.raises(ValueError, match="same shape"):
        V.pair_distances(np.ones((3, 2)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="same length"):
        V.best_threshold([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="is_same"):
        V.verification_metrics(np.ones((3, 2)), np.ones((3, 2)), [True, False], num_folds=2)
    with pytest.raises(ValueError, match="is_same"):
        V.best_threshold([0.1, 0.2], [2, 0])
