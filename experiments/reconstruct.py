"""Faces from feature vectors with a trained or exported generator, one PNG per vector.

    python experiments/reconstruct.py --generator=checkpoints/<run> --features=feats.npy --out=dir
    python experiments/reconstruct.py --export=exported/ --generator=checkpoints/<run>

--features is a `.npy` array [n, d], or a `.npz` with `features` [n, d] and optional `ids` [n]
(strings or numbers): the file names come from the ids (or the row numbers), made safe: only
letters, digits, '.', '_' and '-' are kept (others become '_'), no leading dot, at most 100
characters, duplicates numbered, so a file is never written outside --out. --generator is a run
directory or a SavedModel written by --export.
"""
import os
import re
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dibigan_tf import keras_compat  # noqa: E402,F401  (selects Keras 2 before TF loads)

FLAGS = flags.FLAGS
flags.DEFINE_string("generator", "", "A run directory with a trained G, or an exported "
                    "SavedModel.")
flags.DEFINE_string("features", "", "Feature vectors: .npy [n, d] or .npz (features, ids).")
flags.DEFINE_string("out", "", "Output folder for the PNGs.")
flags.DEFINE_string("export", "", "Instead: export --generator (a run) as a SavedModel here.")
flags.DEFINE_integer("seed", 0, "Seed of v (run directories; exported models seed v from the "
                     "features).")


def safe_names(ids) -> list:
    """File stems from ids: [A-Za-z0-9._-] only, no leading dot, <= 100 chars, unique."""
    out, seen = [], {}
    for i, raw in enumerate(ids):
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", str(raw)).lstrip(".")[:100] or f"row{i}"
        if stem in (".", ".."):
            stem = f"row{i}"
        name = stem
        while name in seen:
            seen[stem] += 1
            name = f"{stem}-{seen[stem]}"
        seen.setdefault(name, 0)
        out.append(name)
    return out


def _read_features(path):
    import numpy as np
    if not os.path.exists(path):
        raise ValueError(f"--features={path}: no such file")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            if "features" not in data:
                raise ValueError(f"{path}: no 'features' array (found {list(data.keys())})")
            feats = data["features"]
            ids = data["ids"].tolist() if "ids" in data else list(range(len(feats)))
    else:
        feats = np.load(path, allow_pickle=False)
        ids = list(range(len(feats)))
    feats = np.asarray(feats, np.float32)
    if feats.ndim != 2:
        raise ValueError(f"{path}: features must be [n, d], got {feats.shape}")
    if len(ids) != len(feats):
        raise ValueError(f"{path}: {len(ids)} ids for {len(feats)} feature vectors")
    if not np.all(np.isfinite(feats)):
        raise ValueError(f"{path}: non-finite values in the features")
    return feats, ids


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.generator:
        raise app.UsageError("--generator is needed")
    from PIL import Image
    from dibigan_tf.training.export import export_generator, reconstruct_with
    try:
        if FLAGS.export:
            print(f"exported: {export_generator(FLAGS.generator, FLAGS.export)}")
            return 0
        if not FLAGS.features or not FLAGS.out:
            raise app.UsageError("--features and --out are needed (or --export)")
        feats, ids = _read_features(FLAGS.features)
        images = reconstruct_with(FLAGS.generator, feats, seed=FLAGS.seed)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    os.makedirs(FLAGS.out, exist_ok=True)
    root = os.path.realpath(FLAGS.out)
    for name, image in zip(safe_names(ids), images):
        path = os.path.realpath(os.path.join(root, name + ".png"))
        if os.path.dirname(path) != root:       # belt and braces: never outside --out
            raise RuntimeError(f"refusing to write {path} outside {root}")
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
    print(f"{len(images)} images written to {FLAGS.out}")
    return 0


if __name__ == "__main__":
    app.run(main)
