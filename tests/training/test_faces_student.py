"""The student stage on faces (`train.py --stage=student --dataset=faces --matcher=dlib`), end
to end on a tiny identity folder the test writes from a real face photo: alignment cache, dlib as
the blackbox behind the shared feature store (each image queried once across runs), F^S trained,
held-out people measured, an LFW pairs file honoured."""
import json
import os

import pytest

from tests.support import run_train, write_people as _write_people

pytest.importorskip("dlib", reason="dlib-bin is not installed (pip install -e '.[faces]')")
pytest.importorskip("face_recognition_models", reason="face_recognition_models not installed")





def _run(tmp_path, data, *extra):
    return run_train([f"--checkpoint_dir={tmp_path / 'ck'}", f"--data_dir={data}",
           f"--pairs={data / 'pairs.txt'}", "--align_size=96", "--image_size=32",
           "--student_depth=small", "--student_width=8", "--student_epochs=2",
           "--student_batch_size=8", "--heldout_fraction=0.34", "--seed=3",
           "--eval_positive_pairs=10", "--eval_negative_pairs=10"] + list(extra),
                     "lfw_student_dlib.flags", timeout=600)


def test_student_stage_on_faces_with_dlib(tmp_path):
    data = tmp_path / "people"
    _write_people(data)
    run = _run(tmp_path, data)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert "unreadable" in out      # the broken file is reported, and the run went on
    metrics = json.loads((tmp_path / "ck" / "lfw-student-dlib" / "student" / "metrics.json")
                         .read_text())
    assert metrics["heldout_identities"] == 2 and metrics["train_identities"] == 4
    assert metrics["heldout_images"] == 8 and metrics["train_images"] == 16
    assert metrics["image_size"] == 32 and metrics["matcher_input_size"] == 96
    assert -1.0 <= metrics["student_cosine_heldout"] <= 1.0
    # F^S's input gradients against those of dlib's Keras model, on the 8 held-out chips
    assert metrics["student_gradient_images"] == 8
    assert -1.0 <= metrics["student_gradient_cosine"] <= 1.0
    assert 0.0 <= metrics["real_verification_accuracy"] <= 1.0
    assert 0.0 <= metrics["student_verification_accuracy"] <= 1.0
    assert metrics["pairs_file_num_pairs"] == 2       # Person_3 and Person_4 are held out; Person_0 is not
    assert metrics["blackbox_queries"] == 24
    assert metrics["num_pairs"] == 20
    split = json.loads((tmp_path / "ck" / "lfw-student-dlib" / "split.json").read_text())
    held_people = {p.split(os.sep)[-2] for p in split["heldout"]}
    assert held_people == {"Person_3", "Person_4"}
    assert not held_people & {p.split(os.sep)[-2] for p in split["train"]}
    stats = next((tmp_path / "ck" / "aligned").glob("*/stats.json"))
    stats = json.loads(stats.read_text())
    assert stats["status_unreadable"] == 1 and stats["aligned"] == 24

    # a second run (another name) shares the feature store, so it sends dlib only its held-out
    # reconstructions; it trains every stage on faces: F^S, H (one prior per training person),
    # G/D, and the report (held-out people as their own gallery)
    whole = _run(tmp_path, data, "--run_name=second", "--stage=all", "--flow_steps=2",
                 "--flow_hidden_channels=8", "--flow_res_blocks=1", "--flow_epochs=1",
                 "--start_resolution=16", "--num_blocks=2", "--g_channels=8,8",
                 "--d_channels=8,8", "--mapping_layers=2", "--mapping_dim=16",
                 "--latent_dim=8", "--stable_images=32,64", "--fade_images=0,32",
                 "--batch_sizes=8,8", "--log_every=1", "--image_every=4")
    assert whole.returncode == 0, (whole.stdout + whole.stderr)[-3000:]
    report = json.loads((tmp_path / "ck" / "second" / "report" / "metrics.json").read_text())
    # the 8 held-out reconstructions, and v_variation's images (8 features x 8 v at most)
    v_queries = report["v_variation_blackbox_queries"]
    assert 0 < v_queries <= 8 * 8
    assert report["blackbox_queries"] == 24 + 8 + v_queries
    assert 0.0 <= report["recon_class_agreement"] <= 1.0     # rank-1 among the held-out people
    # and with each image left out of its own person's centroid (every held-out person has 4)
    assert report["class_agreement_loo_images"] == 8
    assert 0.0 <= report["recon_class_agreement_loo"] <= 1.0
    assert report["flow_bits_per_dim_mixture"] > 0 and "flow_bits_per_dim" not in report
    assert report["flow_train_bits_per_dim"] > 0
    for name in ("reconstructions", "figure4", "figure6", "figure7"):
        assert (tmp_path / "ck" / "second" / "report" / f"{name}.png").exists(), name
