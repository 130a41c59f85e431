import json

import numpy as np
import pytest
from PIL import Image

from dibigan_tf.evaluation.report import (REQUIRED_KEYS, evaluate_reconstructions,
                                          reconstruction_figure, write_report)


def _clustered(labels, dim=8, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[: labels.max() + 1] * 3.0
    return (centres[labels] + noise * rng.standard_normal((len(labels), dim))).astype(np.float32)


def test_evaluate_reconstructions_perfect_vs_wrong_class():
    labels = np.repeat(np.arange(4), 25)
    real = _clustered(labels, seed=0)
    train_labels = np.repeat(np.arange(4), 10)
    train = _clustered(train_labels, seed=1)
    perfect = evaluate_reconstructions(real, real.copy(), labels, train, train_labels,
                                       num_positive=300, num_negative=300, seed=0)
    assert perfect["recon_verification_accuracy"] == perfect["real_verification_accuracy"]
    assert perfect["recon_class_agreement"] == 1.0
    assert perfect["feature_cosine_mean"] == pytest.approx(1.0)
    # reconstructions that land in the next class: agreement 0, cosine ~0, accuracy ~ 0.5
    wrong = evaluate_reconstructions(real, real[(np.arange(100) + 25) % 100], labels, train,
                                     train_labels, num_positive=300, num_negative=300, seed=0)
    assert wrong["recon_class_agreement"] == 0.0
    assert wrong["feature_cosine_mean"] < 0.1
    assert wrong["recon_verification_accuracy"] < 0.6
    assert wrong["num_pairs_positive"] == 300 and wrong["num_pairs_negative"] == 300
    # make_pairs' LFW blocks; both TAR definitions with the impostor counts behind them
    assert wrong["fold_layout"] == "lfw_blocks" and wrong["num_folds"] == 10
    assert wrong["real_tar_at_far_impostor_pairs"] == 300
    assert wrong["recon_val_cv_impostor_pairs_per_fold"] == 30
    assert 0.0 <= wrong["recon_val_cv_at_far_1e-03"] <= 1.0
    assert 0.0 <= wrong["real_tar_at_far_1e-03_achieved_far"] <= 1e-3
    # where they went: every class into the next one (index + 25 rows = class + 1 mod 4)
    assert perfect["recon_class_confusion"] == {"classes": [0, 1, 2, 3],
                                                "counts": (np.eye(4, dtype=int) * 25).tolist()}
    assert wrong["recon_class_confusion"]["counts"] == (
        np.roll(np.eye(4, dtype=int), 1, axis=1) * 25).tolist()


def test_confusion_is_left_out_for_many_identities():
    labels = np.repeat(np.arange(30), 4)
    real = _clustered(labels, dim=32)
    out = evaluate_reconstructions(real, real.copy(), labels, real, labels, num_positive=50,
                                   num_negative=50, seed=0)
    assert "recon_class_confusion" not in out and out["recon_class_agreement"] == 1.0


def test_balanced_agreement_weighs_each_class_once():
    # class 0 has 60 rows, classes 1-3 have 4 each; only class 0's reconstructions land home
    labels = np.concatenate([np.zeros(60, int), np.repeat(np.arange(1, 4), 4)])
    real = _clustered(labels, seed=2)
    recon = real.copy()
    recon[60:] = _clustered(np.zeros(12, int), seed=3)      # classes 1-3 reconstructed as 0
    out = evaluate_reconstructions(real, recon, labels, real, labels, num_positive=50,
                                   num_negative=50, seed=0)
    assert out["recon_class_agreement"] == pytest.approx(60 / 72)
    assert out["recon_class_agreement_balanced"] == pytest.approx(0.25)


def test_leave_one_out_agreement_for_a_gallery_of_the_images_themselves():
    # class 0: 5 images; class 1: 5; class 2: one image, reconstructed as class 0.
    labels = np.array([0] * 5 + [1] * 5 + [2])
    real = _clustered(labels, seed=4)
    recon = real.copy()
    recon[10] = real[0]
    recon[0] = real[5]                       # one class-0 image reconstructed as class 1
    out = evaluate_reconstructions(real, recon, labels, real, labels, num_positive=20,
                                   num_negative=20, seed=0, leave_one_out=True)
    # the plain rule counts class 2's lone image (itself its centroid) for the real images
    assert out["real_class_agreement"] == 1.0 and out["real_class_agreement_loo"] == 1.0
    assert out["recon_class_agreement"] == pytest.approx(9 / 11)
    assert out["class_agreement_loo_images"] == 10                    # class 2 not probed
    assert out["recon_class_agreement_loo"] == pytest.approx(9 / 10)
    # the same probes against the gallery without each image, one at a time
    from dibigan_tf.evaluation.verification import nearest_centroid_labels
    hits = [nearest_centroid_labels(recon[i:i + 1], labels[i:i + 1], real[keep], labels[keep])[0]
            == labels[i] for i in range(10) for keep in [np.arange(11) != i]]
    assert out["recon_class_agreement_loo"] == pytest.approx(np.mean(hits))
    plain = evaluate_reconstructions(real, recon, labels, real, labels, num_positive=20,
                                     num_negative=20, seed=0)
    assert "recon_class_agreement_loo" not in plain                   # digits: training gallery


def test_reconstruction_figure_rows_per_class():
    labels = np.repeat(np.arange(3), 9)
    inputs = np.zeros((27, 4, 4, 1), np.uint8)
    recons = np.full((27, 4, 4, 1), 200, np.uint8)
    fig = reconstruction_figure(inputs, recons, labels, per_class=8, scale=1)
    assert fig.shape == (3 * 4, 16 * 4, 1)
    # columns alternate input (0) | reconstruction (200)
    assert fig[0, 0, 0] == 0 and fig[0, 4, 0] == 200


def test_write_report_contents(tmp_path):
    metrics = {"real_verification_accuracy": 0.98, "recon_verification_accuracy": 0.96,
               "recon_class_agreement": 0.97, "feature_cosine_mean": 0.9,
               "blackbox_queries": 6000, "seconds": {"matcher": 10.0, "gan": 300.0},
               "num_pairs_positive": 3000, "num_pairs_negative": 3000}
    fig = np.zeros((8, 16, 1), np.uint8)
    write_report(str(tmp_path), metrics, fig, title="t")
    with open(tmp_path / "metrics.json") as handle:
        assert json.load(handle) == metrics
    assert Image.open(tmp_path / "reconstructions.png").size == (16, 8)
    text = (tmp_path / "report.md").read_text()
    assert "2.00 points" in text and "| gan | 300.0 |" in text
    assert "10 folds, lfw_blocks" in text
    assert "reconstructions.png" in text and "`recon_class_agreement` | 0.9700" in text
    assert "Where reconstructions go" not in text
    metrics["recon_class_confusion"] = {"classes": [0, 1], "counts": [[5, 1], [0, 6]]}
    write_report(str(tmp_path / "c"), metrics, fig, title="t")
    text = (tmp_path / "c" / "report.md").read_text()
    assert "| 0 | **5** | 1 |" in text and "| 1 | 0 | **6** |" in text
    bad = {k: v for k, v in metrics.items() if k != "blackbox_queries"}
    with pytest.raises(ValueError, match="blackbox_queries"):
        write_report(str(tmp_path / "x"), bad, fig, title="t")
    assert set(REQUIRED_KEYS) <= set(metrics)
