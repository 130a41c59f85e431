"""The evaluation protocols against independent ports of the references the field uses:
insightface's verification.py (calculate_roc, calculate_val) and PGGAN's metrics/ms_ssim.py;
stratified folds of a pairs file that is not in LFW's balanced blocks; flip test-time
augmentation.

The ports below follow the reference code's own arithmetic (its loops, its comparisons, its
float32 / FFT steps) and share nothing with dibigan_tf; only the threshold loops are written as
one broadcast comparison over the grid (the same values)."""
import numpy as np
import pytest

from dibigan_tf.evaluation import verification as V
from dibigan_tf.evaluation.attack import (ms_ssim_pggan, ms_ssim_pggan_values,
                                          random_different_pairs)
from dibigan_tf.evaluation.tta import embed_with_flip, mirror

scipy = pytest.importorskip("scipy", reason="the reference ports need scipy (test extra)")
from scipy import interpolate, signal  # noqa: E402


# ---------------------------------------------------------------------------
# insightface recognition/arcface_torch/eval/verification.py, ported
# ---------------------------------------------------------------------------
def _kfold(n, k):
    """sklearn KFold(n_splits=k, shuffle=False).split(np.arange(n))."""
    sizes = np.full(k, n // k)
    sizes[: n % k] += 1
    idx, start = np.arange(n), 0
    for size in sizes:
        yield np.r_[idx[:start], idx[start + size:]], idx[start:start + size]
        start += size


def _accuracy_per_threshold(thresholds, dist, issame):
    """calculate_accuracy's acc for every threshold."""
    predict = np.less(dist[None, :], thresholds[:, None])
    tp = np.sum(predict & issame[None, :], axis=1)
    tn = np.sum(~predict & ~issame[None, :], axis=1)
    return (tp + tn).astype(float) / dist.size


def ref_calculate_roc(thresholds, emb1, emb2, issame, nrof_folds=10):
    """calculate_roc (pca=0): per-fold accuracy at the grid threshold best on the other folds."""
    dist = np.sum(np.square(np.subtract(emb1, emb2)), 1)
    accuracy = np.zeros(nrof_folds)
    for fold, (train, test) in enumerate(_kfold(len(issame), nrof_folds)):
        best = np.argmax(_accuracy_per_threshold(thresholds, dist[train], issame[train]))
        accuracy[fold] = _accuracy_per_threshold(thresholds[best:best + 1], dist[test],
                                                 issame[test])[0]
    return accuracy


def _interp1d_slinear(x, y):
    """scipy.interpolate.interp1d(x, y, kind='slinear') as SciPy <= 1.8 built it: x sorted
    (mergesort), then make_interp_spline's k=1 special case, a degree-1 B-spline with knots
    [x0, x..., x_last] and coefficients y. SciPy >= 1.9 refuses the repeated FAR values that
    calculate_val always passes ("Expect x to not have duplicates", insightface issues 2152 and
    2290); this is the function insightface's numbers were computed with."""
    order = np.argsort(x, kind="mergesort")
    x, y = np.asarray(x, float)[order], np.asarray(y, float)[order]
    return interpolate.BSpline.construct_fast(np.r_[x[0], x, x[-1]], y, 1)


def _val_far(threshold, dist, issame):
    """calculate_val_far."""
    predict = np.less(dist, threshold)
    true_accept = np.sum(np.logical_and(predict, issame))
    false_accept = np.sum(np.logical_and(predict, np.logical_not(issame)))
    return (float(true_accept) / float(np.sum(issame)),
            float(false_accept) / float(np.sum(np.logical_not(issame))))


def ref_calculate_val(thresholds, emb1, emb2, issame, far_target, nrof_folds=10):
    """calculate_val: (val_mean, val_std, far_mean)."""
    dist = np.sum(np.square(np.subtract(emb1, emb2)), 1)
    val, far = np.zeros(nrof_folds), np.zeros(nrof_folds)
    for fold, (train, test) in enumerate(_kfold(len(issame), nrof_folds)):
        neg = dist[train][~issame[train]]
        far_train = np.sum(np.less(neg[None, :], thresholds[:, None]), axis=1) / float(neg.size)
        if np.max(far_train) >= far_target:
            threshold = _interp1d_slinear(far_train, thresholds)(far_target)
        else:
            threshold = 0.0
        val[fold], far[fold] = _val_far(threshold, dist[test], issame[test])
    return np.mean(val), np.std(val), np.mean(far)


def _normalize(x):
    """sklearn.preprocessing.normalize (L2, rows)."""
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _embedded_pairs(seed, folds=10, per_fold=300, noise=0.9, dim=16):
    """LFW-layout pairs of random embeddings: each fold its positives then its negatives."""
    rng = np.random.default_rng(seed)
    same = np.tile(np.r_[np.ones(per_fold // 2, bool), np.zeros(per_fold // 2, bool)], folds)
    base = rng.standard_normal((same.size, dim))
    other = np.where(same[:, None], base + noise * rng.standard_normal(base.shape),
                     rng.standard_normal(base.shape))
    return _normalize(base), _normalize(other), same


@pytest.mark.parametrize("seed,noise", [(0, 0.9), (1, 1.3)])
def test_accuracy_and_std_equal_insightface_calculate_roc(seed, noise):
    emb1, emb2, same = _embedded_pairs(seed, noise=noise)
    ref = ref_calculate_roc(np.arange(0, 4, 0.01), emb1, emb2, same)
    ours = V.kfold_verification(V.pair_distances(emb1, emb2), same,
                                thresholds=V.ROC_THRESHOLDS)
    assert ours["fold_layout"] == "lfw_blocks"
    assert ours["accuracy_mean"] == pytest.approx(np.mean(ref), abs=1e-6)
    assert ours["accuracy_std"] == pytest.approx(np.std(ref), abs=1e-6)
    np.testing.assert_allclose(ours["fold_accuracies"], ref, atol=1e-12)
    # The default exact threshold search is another (legitimate) number: within a grid step.
    exact = V.kfold_verification(V.pair_distances(emb1, emb2), same)
    assert abs(exact["accuracy_mean"] - np.mean(ref)) < 0.01


@pytest.mark.parametrize("far", [1e-3, 1e-2, 0.1])
def test_val_at_far_equals_insightface_calculate_val(far):
    emb1, emb2, same = _embedded_pairs(2, noise=1.0)
    val, val_std, far_mean = ref_calculate_val(np.arange(0, 4, 0.001), emb1, emb2, same, far)
    ours = V.val_at_far(V.pair_distances(emb1, emb2), same, far=far)
    assert ours["val"] == pytest.approx(val, abs=1e-9)
    assert ours["val_std"] == pytest.approx(val_std, abs=1e-9)
    assert ours["far"] == pytest.approx(far_mean, abs=1e-12)
    assert ours["impostor_pairs_per_fold"] == 150
    # the in-sample ROC point is a different definition: same order of magnitude here
    roc = V.tar_at_far(V.pair_distances(emb1, emb2), same, far=far)
    assert abs(roc["tar"] - ours["val"]) < 0.15


def test_val_at_far_when_no_grid_threshold_reaches_the_far():
    # every impostor at distance 4 (opposite vectors): no grid threshold (< 4) accepts one, so
    # the reference sets the threshold to 0 and accepts nothing
    emb1, emb2, same = _embedded_pairs(3)
    emb2 = np.where(same[:, None], emb2, -emb1)
    val, val_std, far_mean = ref_calculate_val(np.arange(0, 4, 0.001), emb1, emb2, same, 1e-3)
    ours = V.val_at_far(V.pair_distances(emb1, emb2), same, far=1e-3)
    assert (ours["val"], ours["val_std"], ours["far"]) == (val, val_std, far_mean) == (0, 0, 0)


def test_verification_metrics_report_both_tar_definitions():
    emb1, emb2, same = _embedded_pairs(4)
    res = V.verification_metrics(emb1, emb2, same, fars=(1e-3, 1e-2))
    d = V.pair_distances(emb1, emb2)
    assert res["tar_at_far_1e-02"] == V.tar_at_far(d, same, 1e-2)["tar"]
    assert res["tar_at_far_1e-02_achieved_far"] <= 1e-2
    assert res["tar_at_far_impostor_pairs"] == 1500
    val = V.val_at_far(d, same, 1e-2)
    assert (res["val_cv_at_far_1e-02"], res["val_cv_at_far_1e-02_std"],
            res["val_cv_at_far_1e-02_achieved_far"]) == (val["val"], val["val_std"], val["far"])
    assert res["val_cv_impostor_pairs_per_fold"] == 150
    keys = V.metrics_json_keys(res, "real_")
    assert keys["real_verification_accuracy"] == res["accuracy"]
    assert keys["real_tar_at_far_1e-03"] == res["tar_at_far_1e-03"]
    assert keys["real_val_cv_at_far_1e-03"] == res["val_cv_at_far_1e-03"]
    assert "real_fold_layout" not in keys and "fold_layout" not in keys


# ---------------------------------------------------------------------------
# Folds of a pairs file that is not in LFW's balanced blocks
# ---------------------------------------------------------------------------
def _distances(seed, positives=500, negatives=500):
    """Distances of a matcher at ~89% accuracy (as the synthetic check of the fold problem)."""
    rng = np.random.default_rng(seed)
    return (np.clip(rng.normal(0.9, 0.25, positives), 0, 4),
            np.clip(rng.normal(1.5, 0.25, negatives), 0, 4))


def test_positives_then_negatives_scores_as_the_same_pairs_interleaved():
    pos, neg = _distances(0)
    # LFW View 1 pairsDevTrain.txt's layout: every positive, then every negative
    sorted_d = np.r_[pos, neg]
    sorted_s = np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)]
    # the same pairs interleaved p0 n0 p1 n1 ...: 10 contiguous blocks of 50 + 50
    inter_d = np.ravel(np.column_stack([pos, neg]))
    inter_s = np.ravel(np.column_stack([np.ones(pos.size, bool), np.zeros(neg.size, bool)]))
    assert V.fold_layout(sorted_s) == "stratified" and V.fold_layout(inter_s) == "lfw_blocks"
    fixed = V.kfold_verification(sorted_d, sorted_s)
    reference = V.kfold_verification(inter_d, inter_s)
    assert fixed["fold_layout"] == "stratified" and reference["fold_layout"] == "lfw_blocks"
    assert fixed["fold_accuracies"] == reference["fold_accuracies"]
    assert fixed["accuracy_mean"] == reference["accuracy_mean"]
    assert fixed["accuracy_std"] == reference["accuracy_std"]
    for far in (1e-2, 0.1):
        assert V.val_at_far(sorted_d, sorted_s, far)["val"] == \
            V.val_at_far(inter_d, inter_s, far)["val"]
    # what contiguous blocks of the sorted file gave: one-sided folds, a lower accuracy
    blocks = V.kfold_verification(sorted_d, sorted_s, layout="lfw_blocks")
    assert blocks["accuracy_mean"] < fixed["accuracy_mean"] - 0.005


def test_stratified_folds_keep_each_class_in_order_and_share():
    same = np.r_[np.ones(170, bool), np.zeros(165, bool)]          # the 335-pair shape
    layout, folds = V.fold_test_indices(same, 10)
    assert layout == "stratified"
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(same.size))
    positives = [int(same[f].sum()) for f in folds]
    negatives = [int((~same[f]).sum()) for f in folds]
    assert positives == [17] * 10 and negatives == [16] * 5 + [17] * 5
    assert np.array_equal(folds[0], np.r_[0:17, 170:186])           # class order kept
    assert np.array_equal(folds[9], np.r_[153:170, 318:335])
    # extra positives go to the first folds, extra negatives to the last: no empty fold
    sizes = [len(f) for f in V.fold_test_indices(np.r_[[True] * 6, [False] * 6], 10)[1]]
    assert sizes == [1, 1, 1, 1, 2, 2, 1, 1, 1, 1]
    # a list already in balanced blocks gets the same folds either way
    _, _, balanced = V.make_pairs(np.repeat(np.arange(40), 5), 200, 300, seed=1)
    blocks = V.fold_test_indices(balanced, 10)
    strat = V.fold_test_indices(balanced, 10, layout="stratified")
    assert blocks[0] == "lfw_blocks"
    assert all(np.array_equal(a, b) for a, b in zip(blocks[1], strat[1]))
    # blocks off by more than one pair (a few pairs dropped from a balanced file) are stratified
    shifted = np.r_[np.ones(3, bool), balanced]
    assert V.fold_layout(shifted) == "stratified"
    with pytest.raises(ValueError, match="layout"):
        V.fold_test_indices(same, 10, layout="random")


def test_val_is_none_when_a_test_fold_lacks_a_class():
    same = np.r_[np.ones(6, bool), np.zeros(6, bool)]              # 6 + 6 pairs, 10 folds
    d = np.r_[np.linspace(0.1, 0.6, 6), np.linspace(1.0, 2.0, 6)]
    res = V.verification_metrics(np.c_[np.ones(12), np.zeros(12)],
                                 np.c_[np.cos(d), np.sin(d)], same, num_folds=10)
    assert res["fold_layout"] == "stratified" and res["accuracy"] == 1.0
    assert res["val_cv_at_far_1e-03"] is None and res["val_cv_impostor_pairs_per_fold"] == 0


# ---------------------------------------------------------------------------
# PGGAN progressive_growing_of_gans/metrics/ms_ssim.py, ported
# ---------------------------------------------------------------------------
def _fspecial_gauss(size, sigma):
    radius = size // 2
    offset, start, stop = 0.0, -radius, radius + 1
    if size % 2 == 0:
        offset, stop = 0.5, stop - 1
    x, y = np.mgrid[offset + start:stop, offset + start:stop]
    g = np.exp(-((x ** 2 + y ** 2) / (2.0 * sigma ** 2)))
    return g / g.sum()


def _ssim_for_multiscale(img1, img2, conv, max_val=255, filter_size=11, filter_sigma=1.5,
                         k1=0.01, k2=0.03):
    img1, img2 = img1.astype(np.float32), img2.astype(np.float32)
    _, height, width, _ = img1.shape
    size = min(filter_size, height, width)
    sigma = size * filter_sigma / filter_size
    window = np.reshape(_fspecial_gauss(size, sigma), (1, size, size, 1))
    mu1, mu2 = conv(img1, window), conv(img2, window)
    sigma11, sigma22 = conv(img1 * img1, window), conv(img2 * img2, window)
    sigma12 = conv(img1 * img2, window)
    mu11, mu22, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma11 -= mu11
    sigma22 -= mu22
    sigma12 -= mu12
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    v1 = 2.0 * sigma12 + c2
    v2 = sigma11 + sigma22 + c2
    ssim = np.mean((((2.0 * mu12 + c1) * v1) / ((mu11 + mu22 + c1) * v2)), axis=(1, 2, 3))
    return ssim, np.mean(v1 / v2, axis=(1, 2, 3))


def _hox_downsample(img):
    return (img[:, 0::2, 0::2, :] + img[:, 1::2, 0::2, :] + img[:, 0::2, 1::2, :]
            + img[:, 1::2, 1::2, :]) * 0.25


def ref_msssim(img1, img2, conv=None):
    """msssim(img1, img2) with the defaults: mean over the batch. conv: the reference's
    signal.fftconvolve(x, window, mode='valid') (single-precision FFT for its float32
    images), or another 'valid' convolution."""
    conv = conv or (lambda x, w: signal.fftconvolve(x, w, mode="valid"))
    weights = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
    im1, im2 = [x.astype(np.float32) for x in (img1, img2)]
    mssim, mcs = [], []
    for _ in range(weights.size):
        ssim, cs = _ssim_for_multiscale(im1, im2, conv)
        mssim.append(ssim)
        mcs.append(cs)
        im1, im2 = [_hox_downsample(x) for x in (im1, im2)]
    mssim = np.clip(np.asarray(mssim), 0.0, np.inf)
    mcs = np.clip(np.asarray(mcs), 0.0, np.inf)
    return np.mean(np.prod(mcs[:-1, :] ** weights[:-1, np.newaxis], axis=0)
                   * (mssim[-1, :] ** weights[-1]))


def _fixed_images():
    """Fixed 64x64 RGB images: smooth blobs, their noisy and shifted copies, and (when
    scikit-image is installed) crops of its astronaut photo."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    blobs = []
    for k in range(4):
        cy, cx, r = rng.uniform(16, 48, 2).tolist() + [rng.uniform(6, 20)]
        shade = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        blobs.append(np.stack([shade * c for c in rng.uniform(60, 255, 3)], -1)
                     + 0.3 * xx[..., None])
    blobs = np.clip(np.stack(blobs), 0, 255).astype(np.uint8)
    noisy = np.clip(blobs + rng.normal(0, 20, blobs.shape), 0, 255).astype(np.uint8)
    images = [blobs, noisy, np.roll(blobs, 5, axis=2)]
    try:
        from skimage import data
        photo = data.astronaut()
        images.append(np.stack([photo[y:y + 128:2, x:x + 128:2]
                                for y, x in ((0, 100), (40, 160), (200, 200), (300, 50))]))
    except ImportError:
        pass
    return np.concatenate(images)


def test_ms_ssim_equals_the_pggan_reference_on_fixed_images():
    images = _fixed_images()
    # each blob with its noisy and its shifted copy, with another blob, and the photo crops
    pairs = [(k, k + 4) for k in range(4)] + [(k, k + 8) for k in range(4)] + \
        [(k, (k + 1) % 4) for k in range(4)] + [(4, 9), (12, 13), (14, 15), (12, 1)]
    pairs = [(i, j) for i, j in pairs if j < len(images)]
    a, b = np.array(pairs).T
    ours = ms_ssim_pggan_values(images[a], images[b])
    ref = np.array([ref_msssim(images[i:i + 1], images[j:j + 1]) for i, j in zip(a, b)])
    # the reference's single-precision FFT is good to ~1e-6 ...
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    # ... and with a double-precision convolution it is ours to rounding
    exact = lambda x, w: signal.fftconvolve(x.astype(np.float64), w, mode="valid")  # noqa: E731
    ref64 = np.array([ref_msssim(images[i:i + 1], images[j:j + 1], exact)
                      for i, j in zip(a, b)])
    np.testing.assert_allclose(ours, ref64, atol=1e-10)
    assert ms_ssim_pggan(images[a], images[b], batch=5) == pytest.approx(np.mean(ref), abs=1e-5)
    # alike pairs (0.78-0.95) and unrelated ones, whose negative cs is clipped to 0
    assert (ref == 0).any() and ref.max() > 0.9 and ((ref > 0.7) & (ref < 0.9)).any()
    assert np.allclose(ms_ssim_pggan_values(images, images), 1.0)


def test_ms_ssim_small_grey_images_and_size_checks():
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (3, 32, 32, 1)).astype(np.uint8)
    ours = ms_ssim_pggan_values(grey, grey[::-1])
    ref = [ref_msssim(grey[i:i + 1], grey[::-1][i:i + 1]) for i in range(3)]
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    with pytest.raises(ValueError, match="at least 16"):
        ms_ssim_pggan_values(grey[:, :8, :8], grey[:, :8, :8])


def test_random_different_pairs_are_seeded_and_of_different_people():
    labels = np.repeat(np.arange(5), 4)
    a, b = random_different_pairs(labels, 50, seed=3)
    assert len(a) == 50 and np.all(labels[a] != labels[b])
    again = random_different_pairs(labels, 50, seed=3)
    assert np.array_equal(a, again[0]) and np.array_equal(b, again[1])
    assert not np.array_equal(a, random_different_pairs(labels, 50, seed=4)[0])
    with pytest.raises(ValueError, match="two identities"):
        random_different_pairs(np.zeros(6), 5)


# ---------------------------------------------------------------------------
# Flip test-time augmentation
# ---------------------------------------------------------------------------
def test_flip_tta_sums_the_embeddings_of_image_and_mirror():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 10, 3)).astype(np.uint8)
    seen = []

    def embed(batch):          # not mirror-invariant: the column profile of channel 0
        seen.append(batch.copy())
        return batch[..., 0].mean(axis=1).astype(np.float64)

    plain = embed_with_flip(embed, images, flip_tta=False)
    assert len(seen) == 1 and np.array_equal(plain, embed(images))
    seen.clear()
    both = embed_with_flip(embed, images, flip_tta=True)
    assert len(seen) == 2 and np.array_equal(seen[1], images[:, :, ::-1])
    np.testing.assert_allclose(both, plain + plain[:, ::-1])
    assert mirror(images).flags["C_CONTIGUOUS"]
    # insightface's Accuracy-Flip scores the normalised sum: a mirror-symmetric embedding
    # scores as without the flip
    sym = lambda batch: np.ones((len(batch), 4)) * batch.mean(axis=(1, 2, 3))[:, None]  # noqa
    np.testing.assert_allclose(V.l2_normalize(embed_with_flip(sym, images, True)),
                               V.l2_normalize(sym(images)))
