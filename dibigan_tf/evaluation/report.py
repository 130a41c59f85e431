"""The run report: `metrics.json`, `reconstructions.png` and `report.md` in `<run>/report/`.

`evaluate_reconstructions` is the evaluation core used by every dataset: the verification protocol
on real held-out pairs, the paper's reconstruction protocol (section 4.2) on the same pairs, the
nearest-centroid class agreement of reconstructions and the feature cosine, all scored by the
matcher F through the feature store (so every reconstruction query is counted).
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from dibigan_tf.data.files import write_json_atomic
from dibigan_tf.data.images import image_grid
from dibigan_tf.evaluation import verification as ver

REQUIRED_KEYS = ("real_verification_accuracy", "recon_verification_accuracy",
                 "recon_class_agreement", "feature_cosine_mean", "blackbox_queries", "seconds")


def evaluate_reconstructions(real_features, recon_features, labels, centroid_features,
                             centroid_labels, num_positive=3000, num_negative=3000, seed=0,
                             fars=(1e-3,), leave_one_out=False):
    """All identity metrics of a set of reconstructions.

    real_features[i]: F(x_i) of held-out image i; recon_features[i]: F(G(F(x_i))); labels[i]: its
    identity. Centroids (for class agreement) come from `centroid_features`/`centroid_labels`
    (the training split). Returns a dict of floats (the verification keys are those of
    `verification.metrics_json_keys`: accuracy, the in-sample ROC TAR and the cross-validated VAL
    at each FAR, with their impostor counts; `fold_layout`), plus `recon_class_confusion` (see
    `class_confusion`) when there are at most MAX_CONFUSION_CLASSES classes.

    leave_one_out: for a gallery made of the held-out images themselves (face runs, whose
    people are held out whole), also `real_/recon_class_agreement_loo` with each image left out
    of its own identity's centroid (`verification.leave_one_out_nearest_centroid`), over the
    `class_agreement_loo_images` images of identities with two or more; the plain real agreement
    matches an identity's single image to itself.
    """
    idx_a, idx_b, is_same = ver.make_pairs(labels, num_positive, num_negative, seed=seed)
    predicted = ver.nearest_centroid_labels(recon_features, labels, centroid_features,
                                            centroid_labels)
    real = ver.verification_metrics(real_features[idx_a], real_features[idx_b], is_same,
                                    fars=fars)
    recon = ver.reconstruction_protocol(real_features, recon_features, idx_a, idx_b, is_same,
                                        fars=fars)
    out = {
        "num_pairs_positive": int(is_same.sum()),
        "num_pairs_negative": int((~is_same).sum()),
        "fold_layout": real["fold_layout"],
        "num_folds": real["num_folds"],
        **ver.metrics_json_keys(real, "real_"),
        **ver.metrics_json_keys(recon, "recon_"),
        "recon_class_agreement": float(np.mean(predicted == np.asarray(labels))),
        "recon_class_agreement_balanced": ver.class_balanced_agreement(labels, predicted),
        "real_class_agreement": ver.nearest_centroid_agreement(
            real_features, labels, centroid_features, centroid_labels),
        "feature_cosine_mean": float(np.mean(ver.cosine_similarity_rows(recon_features,
                                                                        real_features))),
    }
    if leave_one_out:
        for name, probes in (("recon", recon_features), ("real", real_features)):
            probed, nearest = ver.leave_one_out_nearest_centroid(probes, real_features, labels)
            out[f"{name}_class_agreement_loo"] = float(np.mean(nearest
                                                               == np.asarray(labels)[probed]))
        out["class_agreement_loo_images"] = int(probed.size)
    classes = np.unique(centroid_labels)     # every label has a centroid (checked above)
    if classes.size <= MAX_CONFUSION_CLASSES:
        out["recon_class_confusion"] = class_confusion(labels, predicted, classes)
    return out


# A confusion table is kept in the report for a few classes (digits), not for face identities.
MAX_CONFUSION_CLASSES = 20


def class_confusion(labels, predicted, classes) -> dict:
    """{"classes": [...], "counts": rows = source class, columns = the class F's nearest
    centroid gives its reconstruction}; JSON-ready."""
    classes = np.asarray(classes)          # sorted (np.unique), so searchsorted indexes it
    counts = np.zeros((classes.size, classes.size), np.int64)
    np.add.at(counts, (np.searchsorted(classes, labels), np.searchsorted(classes, predicted)), 1)
    return {"classes": [c.item() for c in classes], "counts": counts.tolist()}


def reconstruction_figure(inputs, recons, labels, per_class=8, scale=2):
    """Rows = classes, each with `per_class` (input | reconstruction) pairs side by side.

    inputs/recons: uint8 [n, h, w, c]; returns a uint8 RGB or greyscale image [H, W, c].
    """
    cells = []
    classes = np.unique(labels)
    for label in classes:
        members = np.flatnonzero(labels == label)[:per_class]
        row = []
        for i in members:
            row += [inputs[i], recons[i]]
        row += [np.zeros_like(inputs[0])] * (2 * per_class - len(row))
        cells += row
    grid = image_grid(np.stack(cells), 2 * per_class)
    # thin separators between pairs are implicit in the column order; upscale for visibility
    return np.kron(grid, np.ones((scale, scale, 1), np.uint8))


def write_report(report_dir, metrics: dict, figure: np.ndarray, title: str, notes=()):
    """Writes metrics.json, reconstructions.png and report.md; returns the metrics path."""
    missing = [k for k in REQUIRED_KEYS if k not in metrics]
    if missing:
        raise ValueError(f"metrics lack the required keys {missing}")
    os.makedirs(report_dir, exist_ok=True)
    path = os.path.join(report_dir, "metrics.json")
    write_json_atomic(path, metrics, indent=2, sort_keys=True)
    image = figure[..., 0] if figure.shape[-1] == 1 else figure
    Image.fromarray(image).save(os.path.join(report_dir, "reconstructions.png"))
    lines = [f"# {title}", ""]
    lines += ["| metric | value |", "|---|---|"]
    for key in ("real_verification_accuracy", "recon_verification_accuracy",
                "recon_class_agreement", "recon_class_agreement_balanced", "real_class_agreement",
                "recon_class_agreement_loo", "real_class_agreement_loo",
                "feature_cosine_mean",
                "real_tar_at_far_1e-03", "recon_tar_at_far_1e-03", "real_val_cv_at_far_1e-03",
                "recon_val_cv_at_far_1e-03", "flow_bits_per_dim",
                "student_cosine_heldout", "blackbox_queries"):
        if key in metrics:
            value = metrics[key]
            lines.append(f"| `{key}` | {value:.4f} |" if isinstance(value, float)
                         else f"| `{key}` | {value} |")
    gap = metrics["real_verification_accuracy"] - metrics["recon_verification_accuracy"]
    lines += ["", f"Reconstructions lose **{100 * gap:.2f} points** of verification accuracy "
              f"against real held-out images ({metrics.get('num_pairs_positive', '?')} positive "
              f"and {metrics.get('num_pairs_negative', '?')} negative pairs, "
              f"{metrics.get('num_folds', 10)} folds, {metrics.get('fold_layout', 'lfw_blocks')}; "
              f"definitions: docs/evaluation.md).", ""]
    confusion = metrics.get("recon_class_confusion")
    if confusion:
        names = [str(c) for c in confusion["classes"]]
        lines += ["## Where reconstructions go", "",
                  "Rows: the held-out input's class; columns: the class whose centroid F puts "
                  "its reconstruction nearest to.", "",
                  "| class | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for name, row in zip(names, confusion["counts"]):
            lines.append(f"| {name} | " + " | ".join(
                f"**{v}**" if other == name else str(v) for other, v in zip(names, row)) + " |")
        lines.append("")
    lines += ["## Seconds per stage", "", "| stage | seconds |", "|---|---|"]
    for stage, seconds in metrics["seconds"].items():
        lines.append(f"| {stage} | {seconds:.1f} |")
    lines += ["", "## Reconstructions", "",
              "Each row is one class; each pair of columns is a held-out input and the "
              "reconstruction from its blackbox features.", "",
              "![reconstructions](reconstructions.png)", ""]
    lines += list(notes)
    with open(os.path.join(report_dir, "report.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path
