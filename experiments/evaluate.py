"""Evaluate a matcher, and optionally a trained generator, on any verification pairs.

    python experiments/evaluate.py --matcher=dlib --data_dir=<LFW root> \\
        --pairs=<root>/pairs.txt --output_dir=out [--generator=checkpoints/<run>]
    python experiments/evaluate.py --matcher=onnx --matcher_path=arcface.onnx \\
        --pairs=lfw.bin --output_dir=out

--pairs is an LFW pairs file (images read from --data_dir, `<name>/<name>_NNNN.jpg`, under the
root or its images/ folder, and aligned like the training data, with the same cache) or an
insightface verification `.bin` (already aligned crops; `--bin_realign` aligns them again onto
--align_template). Every image is sent to the matcher once (the feature store). The verification
protocol's 10 folds are the file's blocks when they are LFW-like (each its share of positives),
else stratified folds (`fold_layout` in metrics.json says which). --flip_tta scores F(x) plus F of
x's mirror (insightface's Accuracy-Flip). docs/evaluation.md defines every number.

With --generator (a run directory with a trained G), each image is reconstructed from its
features and the paper's protocols run: the reconstruction protocol (the first image of every
positive pair replaced by its reconstruction), type-I and type-II attack success as TAR at
FAR = 0.1% and 0.01% (threshold from the real impostor pairs), MS-SSIM between images of the
different-people pairs (reconstructions and real; `ms_ssim_pggan_*`: the PGGAN reference's over
seeded random pairs of different people), v_variation (how much G's random input v changes the
image against how much the feature does, and type-I TAR at FAR 0.1% for each of 8 draws of v, over
64 features seeded by --seed), rank-1 identification of each reconstruction among the pairs
file's people (`recon_rank1`; `real_rank1`, for the photos themselves, is there without
--generator too; `*_rank1_balanced`: the mean over people of each person's rank-1, so that one
person's hundreds of photos weigh as much as another's two; `*_rank1_loo*`: each photo left out
of its own person's centroid, over the photos of people with two or more, since the plain real
figure matches a one-photo person's photo to itself; LFW pairs files only) and, with
--inception_weights, the Inception Score.
Writes <output_dir>/metrics.json (the training report's keys where they mean the same) and
<output_dir>/reconstructions.png.
"""
import json
import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dibigan_tf import keras_compat  # noqa: E402,F401  (selects Keras 2 before TF loads)
from experiments.matcher_flags import matcher_config  # noqa: E402  (defines the matcher flags)

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "", "Image root of an LFW pairs file (<root>/<name>/... or "
                    "<root>/images/<name>/...).")
flags.DEFINE_string("pairs", "", "An LFW pairs file or an insightface verification .bin.")
flags.DEFINE_string("output_dir", "", "Where metrics.json (and figures) are written.")
flags.DEFINE_string("generator", "", "A run directory with a trained G (for the reconstruction "
                    "protocol); empty: only the matcher is evaluated.")
flags.DEFINE_string("feature_store_dir", "", "Feature store (default <output_dir>/features; "
                    "point it at a training run's store to reuse its answers).")
flags.DEFINE_string("inception_weights", "", "InceptionV3 ImageNet weights (.h5, local) for "
                    "the Inception Score of the reconstructions (empty: no Inception Score).")
flags.DEFINE_bool("bin_realign", False, ".bin pairs: align the crops again onto "
                  "--align_template (e.g. dlib's chip for --matcher=dlib).")
flags.DEFINE_integer("max_pairs", 0, "Use only the first pairs (0: all).")
flags.DEFINE_integer("seed", 0, "Seed of the generator's v.")
flags.DEFINE_integer("ms_ssim_pairs", 500, "Different-people pairs for MS-SSIM.")
flags.DEFINE_integer("ms_ssim_seed", 0, "Seed of the random different-people pairs of the "
                     "PGGAN-reference MS-SSIM (ms_ssim_pggan_*).")
flags.DEFINE_bool("flip_tta", False, "Score every image by F(image) + F(its horizontal mirror) "
                  "(insightface's Accuracy-Flip; the mirrors are matcher queries too). G still "
                  "reconstructs from F(image).")
flags.DEFINE_string("heldout_of", "", "A training run directory: keep only the pairs whose two "
                    "people are among that run's held-out people (its split.json), i.e. people no "
                    "network of the run trained on.")


def _pair_images(align_key_out):
    """(images uint8 [n,h,w,3], names [n], idx_a, idx_b, is_same) of the pairs."""
    import numpy as np
    from dibigan_tf.data.base import DataError
    from dibigan_tf.data.faces import (PairFiles, index_pairs, load_face_folders,
                                      read_lfw_pairs)
    if FLAGS.pairs.endswith(".bin"):
        from dibigan_tf.data.insightface_bin import read_verification_bin
        images, same = read_verification_bin(FLAGS.pairs, max_pairs=FLAGS.max_pairs)
        n = len(same)
        names = [f"pair{i // 2}" if same[i // 2] else f"pair{i // 2}_{i % 2}"
                 for i in range(2 * n)]
        if FLAGS.bin_realign:
            images = _realign(images)
        return images, names, np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2), same
    if not FLAGS.data_dir:
        raise DataError("an LFW pairs file needs --data_dir (the image root)")
    pairs = read_lfw_pairs(FLAGS.pairs)
    if FLAGS.heldout_of:
        people = _heldout_people(FLAGS.heldout_of)
        kept = [p for p in pairs if p[0] in people and p[2] in people]
        logging.info("%d of %d pairs are of %s's held-out people", len(kept), len(pairs),
                     FLAGS.heldout_of)
        align_key_out["pairs_not_heldout"] = len(pairs) - len(kept)
        pairs = kept
        if not pairs:
            raise DataError(f"no pair of {FLAGS.pairs} has both people among the held-out "
                            f"people of {FLAGS.heldout_of}")
    if FLAGS.max_pairs:
        pairs = pairs[:FLAGS.max_pairs]
    base = FLAGS.data_dir
    if not os.path.isdir(base):
        raise DataError(f"--data_dir={base}: no such folder")
    # (identity, number) -> file: LFW's <name>/<name>_NNNN.<ext>, or the number-th image of the
    # identity's folder in natural order (any naming, any format Pillow reads)
    find = PairFiles(base)
    wanted, index, missing = [], {}, 0
    for n1, i1, n2, i2, _ in pairs:
        for name, number in ((n1, i1), (n2, i2)):
            rel = find(name, number)
            if rel is None:
                missing += 1
            elif rel not in index:
                index[rel] = len(wanted)
                wanted.append((rel, name))
    if not wanted:
        raise DataError(f"every one of the {len(pairs)} pairs of {FLAGS.pairs} was dropped: none "
                        f"of their images is under {base} (looked for <name>/<name>_NNNN.<ext> "
                        f"and the N-th image of <name>/)")
    faces, stats = load_face_folders(base, _aligner(), _align_cache(),
                                     records=([r for r, _ in wanted], [n for _, n in wanted]))
    align_key_out.update(stats)
    align_key_out["pair_images_missing"] = missing
    a, b, same, dropped = index_pairs(pairs, find, {p: i for i, p in enumerate(faces.paths)})
    if dropped:
        logging.warning("%d of %d pairs dropped: an image is missing, unreadable or has no face",
                        dropped, len(pairs))
    align_key_out["pairs_dropped"] = dropped
    if not len(a):
        raise DataError(f"every one of the {len(pairs)} pairs of {FLAGS.pairs} was dropped (an "
                        f"image missing, unreadable or without a face: {stats.get('examples')})")
    names = [faces.class_names[label] for label in faces.labels]
    return faces.images, names, a, b, same


#: fewer pairs than this give an accuracy too coarse to report without a warning
MIN_REPORTED_PAIRS = 100


def _check_pairs(same):
    """Verification needs pairs of both kinds: refused before any query otherwise."""
    from dibigan_tf.data.base import DataError
    positives, negatives = int(same.sum()), int((~same).sum())
    if not positives or not negatives:
        raise DataError(f"{FLAGS.pairs}: the pairs left are all "
                        f"{'positive' if positives else 'negative'} ({positives} same-person, "
                        f"{negatives} different-people); verification needs both kinds")


def _pairs_used(same) -> dict:
    """`pairs_used`, and a warning (logged and in metrics.json) under MIN_REPORTED_PAIRS."""
    out = {"pairs_used": int(len(same))}
    if len(same) < MIN_REPORTED_PAIRS:
        out["warning"] = (f"only {len(same)} pairs were scored (fewer than "
                          f"{MIN_REPORTED_PAIRS}): the accuracy moves in steps of "
                          f"{1 / len(same):.3f} and is not a reliable figure")
        logging.warning("%s", out["warning"])
    return out


def _heldout_people(run_dir):
    """Identity names (image folder names) of a run's held-out split."""
    from dibigan_tf.data.faces import heldout_image_paths
    return {p.split("/")[-2] for p in heldout_image_paths(run_dir) if "/" in p}


def _aligner():
    from dibigan_tf.data.align import make_aligner
    return make_aligner(FLAGS.align_template, FLAGS.align_size, FLAGS.align_multiple,
                        FLAGS.align_none, FLAGS.align_upsample)


def _align_cache():
    return FLAGS.align_cache_dir or os.path.join(FLAGS.output_dir, "aligned")


def _realign(images):
    import numpy as np
    aligner = _aligner()
    out = []
    for image in images:
        result = aligner.align(image)
        out.append(result.image if result.image is not None
                   else aligner.center_crop(image))   # a pair is never dropped silently
    return np.stack(out)


def evaluate():
    import numpy as np
    from dibigan_tf.data.faces import resize_images
    from dibigan_tf.evaluation import verification as ver
    from dibigan_tf.evaluation.attack import (attack_success, inception_score, load_inception,
                                              ms_ssim_of, ms_ssim_pggan, random_different_pairs,
                                              v_variation)
    from dibigan_tf.evaluation.tta import mirror
    from dibigan_tf.matchers.registry import open_matcher
    from dibigan_tf.matchers.store import FeatureStore
    from dibigan_tf.training.image_formats import matcher_images
    from dibigan_tf.training.common import progress_callback
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    stats = {}
    images, names, idx_a, idx_b, same = _pair_images(stats)
    _check_pairs(same)   # before the matcher is asked anything
    # F is opened for the aligned crops, as in training: smaller images (--image_size, G's
    # reconstructions) are resized to its input by matcher_images, so the store is the training
    # run's (same store key) and none of its answers is asked again
    matcher = open_matcher(matcher_config(), images.shape[1:])
    if FLAGS.image_size and FLAGS.image_size != images.shape[1]:
        images = resize_images(images, FLAGS.image_size)
    store = FeatureStore(FLAGS.feature_store_dir or os.path.join(FLAGS.output_dir, "features"),
                         matcher, progress=progress_callback("features", "image"))
    # F(x) is what G reconstructs from; with --flip_tta the scores use F(x) + F(mirror of x)
    plain_feats = store.features(matcher_images(matcher, images))
    feats = (plain_feats if not FLAGS.flip_tta else plain_feats + store.features(
        matcher_images(matcher, mirror(images))))
    folds = min(10, len(same))
    real = ver.verification_metrics(feats[idx_a], feats[idx_b], same, num_folds=folds,
                                    fars=(1e-3, 1e-4))
    metrics = {"pairs": FLAGS.pairs, "image_size": int(images.shape[1]),
               "num_pairs_positive": int(same.sum()),
               "num_pairs_negative": int((~same).sum()), "images": int(len(images)),
               "matcher": matcher.store_key, "flip_tta": bool(FLAGS.flip_tta),
               "fold_layout": real["fold_layout"], "num_folds": real["num_folds"]}
    metrics.update(ver.metrics_json_keys(real, "real_"))
    metrics.update({f"align_{k}": v for k, v in stats.items() if not isinstance(v, dict)})
    # rank-1 identification among the pairs file's people: each image's nearest person by
    # cosine to the mean of that person's real features (the run report's recon_class_agreement
    # for face runs); a .bin names no people
    people = None if FLAGS.pairs.endswith(".bin") else np.asarray(names)

    def rank1(prefix, probes):
        """<prefix>rank1 and <prefix>rank1_balanced (its mean over people) from one pass; the
        same two with each photo left out of its own person's centroid (<prefix>rank1_loo*),
        probing the photos of people with two or more."""
        predicted = ver.nearest_centroid_labels(probes, people, feats, people)
        metrics[f"{prefix}rank1"] = float(np.mean(predicted == people))
        metrics[f"{prefix}rank1_balanced"] = ver.class_balanced_agreement(people, predicted)
        if len(set(names)) < len(names):   # someone has two photos
            probed, predicted = ver.leave_one_out_nearest_centroid(probes, feats, people)
            metrics[f"{prefix}rank1_loo"] = float(np.mean(predicted == people[probed]))
            metrics[f"{prefix}rank1_loo_balanced"] = ver.class_balanced_agreement(
                people[probed], predicted)
            metrics["rank1_loo_probes"] = int(probed.size)
            metrics["rank1_loo_people"] = int(len(set(people[probed].tolist())))

    if people is not None:
        rank1("real_", feats)
        metrics["rank1_people"] = int(len(set(names)))
    different = ~same
    k = min(FLAGS.ms_ssim_pairs, int(different.sum()))
    if FLAGS.generator:
        from dibigan_tf.training.gan import TrainedGenerator
        generator = TrainedGenerator(FLAGS.generator)
        recons = generator(plain_feats, seed=FLAGS.seed)

        def scored(generated):   # F as the pairs are scored (--flip_tta: plus the mirror's)
            out = store.features(matcher_images(matcher, generated))
            return out if not FLAGS.flip_tta else out + store.features(
                matcher_images(matcher, mirror(generated)))

        recon_feats = scored(recons)
        recon = ver.reconstruction_protocol(feats, recon_feats, idx_a, idx_b, same,
                                            num_folds=folds, fars=(1e-3, 1e-4))
        metrics.update(ver.metrics_json_keys(recon, "recon_"))
        metrics["feature_cosine_mean"] = float(np.mean(ver.cosine_similarity_rows(recon_feats,
                                                                                  feats)))
        metrics.update(attack_success(feats, recon_feats, idx_a, idx_b, same))
        if people is not None:
            rank1("recon_", recon_feats)
        queries = store.total_queries
        metrics.update(v_variation(lambda f, v: generator(f, v=v), plain_feats, feats, scored,
                                   seed=FLAGS.seed, labels=np.asarray(names),
                                   latent_dim=generator.cfg.latent_dim))
        metrics["v_variation_blackbox_queries"] = store.total_queries - queries
        size = recons.shape[1]
        small = resize_images(images, size) if images.shape[1] != size else images
        if k:
            metrics["ms_ssim_recon"] = ms_ssim_of(recons[idx_a[different][:k]],
                                                  recons[idx_b[different][:k]])
            metrics["ms_ssim_real"] = ms_ssim_of(small[idx_a[different][:k]],
                                                 small[idx_b[different][:k]])
        if len(set(names)) > 1 and FLAGS.ms_ssim_pairs and min(recons.shape[1:3]) >= 16:
            # the PGGAN reference's MS-SSIM (paper's Table 2) over seeded random pairs of
            # images of different people, the same pairs for reconstructions and real photos
            pa, pb = random_different_pairs(np.asarray(names), FLAGS.ms_ssim_pairs,
                                            seed=FLAGS.ms_ssim_seed)
            metrics["ms_ssim_pggan_recon"] = ms_ssim_pggan(recons[pa], recons[pb])
            metrics["ms_ssim_pggan_real"] = ms_ssim_pggan(small[pa], small[pb])
            metrics["ms_ssim_pggan_pairs"] = int(len(pa))
            metrics["ms_ssim_pggan_seed"] = FLAGS.ms_ssim_seed
        if FLAGS.inception_weights:
            score, std = inception_score(recons, load_inception(FLAGS.inception_weights))
            metrics["inception_score"], metrics["inception_score_std"] = score, std
        _figure(images, recons, os.path.join(FLAGS.output_dir, "reconstructions.png"))
    metrics.update(_pairs_used(same))
    metrics["blackbox_queries"] = store.total_queries
    metrics["blackbox_queries_this_run"] = store.session_queries
    path = os.path.join(FLAGS.output_dir, "metrics.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(metrics, handle, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
    return metrics, path


def _figure(images, recons, path, count=16):
    """Pairs of columns: input (resized to G's size) | reconstruction."""
    import numpy as np
    from PIL import Image
    from dibigan_tf.data.faces import resize_images
    n = min(count, len(images))
    real = resize_images(images[:n], recons.shape[1])
    if real.shape[-1] != recons.shape[-1]:
        real = real.mean(axis=-1, keepdims=True).astype(np.uint8)
    rows = [np.concatenate([r, g], axis=1) for r, g in zip(real, recons[:n])]
    grid = np.concatenate(rows, axis=0)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.pairs or not FLAGS.output_dir:
        raise app.UsageError("--pairs and --output_dir are needed")
    if FLAGS.matcher == "lenet":
        raise app.UsageError("evaluate.py needs a matcher it can open: --matcher=dlib, onnx, "
                             "keras, savedmodel or http")
    from dibigan_tf.data.base import DataError
    from dibigan_tf.evaluation.attack import InceptionError
    from dibigan_tf.matchers.base import MatcherError
    try:
        metrics, path = evaluate()
    except (DataError, MatcherError, InceptionError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for key, value in sorted(metrics.items()):
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    if "v_variation" in metrics:
        print(f"G's v: image spread across v / across features = {metrics['v_variation']:.4f} "
              f"({metrics['v_variation_features']} features x {metrics['v_variation_draws']} "
              f"draws); type-I TAR at FAR 1e-3 across v: mean "
              f"{metrics['attack_type1_tar_at_far_1e-03_v_mean']:.4f}, worst "
              f"{metrics['attack_type1_tar_at_far_1e-03_v_worst']:.4f} "
              f"({metrics['attack_type1_v_impostor_pairs']} impostor pairs)")
    print(f"metrics: {path}")
    return 0


if __name__ == "__main__":
    app.run(main)
