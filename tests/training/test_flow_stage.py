"""H trained on its own (`train.py --stage=flow`) and loaded by a later run
(`--flow_from_run`), which then trains no H of its own; Figure 3 (`--stage=figure3`) on a finished
run; a finished run's G outside training (TrainedGenerator, evaluate.py, the SavedModel export).

H alone, the run loading it and its stages are the session's shared tiny runs
(tests/conftest.py: tiny_flow, tiny_run)."""
import json
import os
import sys

from tests import forkserver
from tests.support import ROOT, TINY, TINY_GAN_FLAGS, copy_stages, run_train


def _run(tmp_path, *extra):
    return run_train([f"--checkpoint_dir={tmp_path}"] + TINY + TINY_GAN_FLAGS + list(extra),
                     timeout=600)


def test_flow_stage_alone_then_loaded_by_a_run(tmp_path, tiny_flow, tiny_run):
    # H alone: the session's `h` (tests/conftest.py: tiny_flow, `train.py --stage=flow`)
    h_dir = tiny_flow
    metrics = json.loads((h_dir / "flow" / "metrics.json").read_text())
    for key in ("flow_bits_per_dim", "flow_bits_per_dim_mixture", "flow_train_bits_per_dim"):
        assert 0.0 < metrics[key] < 16.0, metrics
    assert (h_dir / "flow" / "class_samples.png").exists()
    # only H: no matcher was trained, no image was sent to a matcher
    assert not (h_dir / "matcher").exists() and not (h_dir / "features").exists()

    # a run that names a directory without a finished H is refused with one line
    bad = _run(tmp_path, "--run_name=r", f"--flow_from_run={tmp_path / 'nowhere'}",
               "--stop_after_steps=1")
    assert bad.returncode == 2
    assert "no finished flow stage" in bad.stderr

    # a run loading this H (tests/conftest.py: tiny_run, `--flow_from_run=h`) trains none of
    # its own and reports the same held-out bpd
    assert not (tiny_run / "flow").exists()
    report = json.loads((tiny_run / "report" / "metrics.json").read_text())
    assert not any(k.startswith("biject_") for k in report)
    assert report["seconds"]["flow"] == 0.0
    assert abs(report["flow_bits_per_dim"] - metrics["flow_bits_per_dim"]) < 1e-4


def test_figure3_stage_on_a_finished_run(tmp_path, tiny_flow, tiny_run):
    # Figure 3 on a finished run: a second G without L_biject, both projected and compared
    # on two G seeds: the run's own G and its twin, then a second pair with another G seed.
    # Without a report yet (a run trained by --stage=figure3 alone), the stage writes it. The
    # run's H is loaded from another run (--flow_from_run), as in the Figure 3 sweeps.
    copy_stages(tiny_run, tmp_path / "r")
    (tmp_path / "r" / "report" / "metrics.json").unlink()
    fig = _run(tmp_path, "--run_name=r", f"--flow_from_run={tiny_flow}", "--stage=figure3",
               "--figure3_seeds=2")
    assert fig.returncode == 0, (fig.stdout + fig.stderr)[-3000:]
    for stage in ("gan_without_biject", "gan_seed1", "gan_without_biject_seed1"):
        assert (tmp_path / "r" / stage / "done.json").exists(), stage
    assert (tmp_path / "r" / "report" / "figure3.png").stat().st_size > 1000
    report = json.loads((tmp_path / "r" / "report" / "metrics.json").read_text())
    assert report["run"] == "r" and "recon_verification_accuracy" in report
    assert report["biject_figure3_seeds"] == 2
    for key in ("biject_intra_inter_ratio_without", "biject_intra_inter_ratio_with",
                "biject_intra_inter_ratio_without_h", "biject_intra_inter_ratio_with_h"):
        seeds = report[key + "_per_seed"]
        assert len(seeds) == 2 and all(0.0 < v < 2.0 for v in seeds), (key, report)
        assert seeds[0] != seeds[1], (key, seeds)          # another G seed, another G
        assert abs(report[key] - sum(seeds) / 2) < 1e-9
    assert 0 <= report["biject_intra_inter_ratio_seeds_tighter"] <= 2
    # each G's reconstruction verification on the report's pairs: the run's own G (seed 0, with
    # L_biject) scores exactly the report's figure
    accuracies = report["biject_recon_verification_accuracy_with_per_seed"]
    assert len(accuracies) == 2 and all(0.0 <= a <= 1.0 for a in accuracies)
    assert abs(accuracies[0] - report["recon_verification_accuracy"]) < 1e-9
    assert len(report["biject_recon_verification_accuracy_without_per_seed"]) == 2
    assert 0.0 < report["biject_intra_inter_ratio_real"] < 2.0
    assert 0.0 < report["biject_intra_inter_ratio_real_h"] < 2.0
    # a report written again for the same G keeps the Figure 3 keys; for a retrained G it drops them
    from dibigan_tf.training.run_report import extra_report_keys
    kept = extra_report_keys(str(tmp_path / "r" / "report"), str(tmp_path / "r"))
    assert kept["biject_intra_inter_ratio_with"] == report["biject_intra_inter_ratio_with"]
    done = tmp_path / "r" / "gan" / "done.json"
    done.write_text(done.read_text().replace('"step"', '"step_of_another_run"'))
    assert extra_report_keys(str(tmp_path / "r" / "report"), str(tmp_path / "r")) == {}


def test_trained_generator_evaluate_and_export(tmp_path, tiny_run):
    """The trained G outside training: TrainedGenerator rebuilds G_ema from the run and gives the
    run's own reconstructions (same seed, same v), so F's cosine matches the report exactly."""
    run_dir = tiny_run
    report = json.loads((run_dir / "report" / "metrics.json").read_text())
    import numpy as np
    from PIL import Image
    from dibigan_tf.data.digits import load_embedded_digits
    from dibigan_tf.evaluation.verification import cosine_similarity_rows
    from dibigan_tf.keras_compat import keras
    from dibigan_tf.matchers.lenet import LeNetMatcher
    from dibigan_tf.matchers.lenet import feature_model
    from dibigan_tf.training.gan import TrainedGenerator
    split = json.loads((run_dir / "split.json").read_text())
    digits = load_embedded_digits()
    held = digits.subset(np.array(split["heldout"]))
    classifier = keras.models.load_model(str(run_dir / "matcher" / "lenet.keras"), compile=False)
    lenet = LeNetMatcher(classifier)
    feats = lenet.embed(held.images)
    generator = TrainedGenerator(str(run_dir))
    recons = generator(feats, seed=0)
    assert recons.shape == held.images.shape and recons.dtype == np.uint8
    cosine = float(np.mean(cosine_similarity_rows(lenet.embed(recons), feats)))
    assert abs(cosine - report["feature_cosine_mean"]) < 1e-4, (cosine, report)

    # experiments/evaluate.py --generator on an LFW-format folder of the held-out digits
    root = tmp_path / "digits"
    from dibigan_tf.data.faces import lfw_file_name
    names = [f"d{label}" for label in held.labels]
    counts = {}
    for image, name in zip(held.images, names):
        counts[name] = counts.get(name, 0) + 1
        path = root / lfw_file_name(name, counts[name])
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0]).save(path, quality=100)
    lines = [f"d{c}\t1\t2" for c in range(10)] + [f"d{c}\t1\td{(c + 1) % 10}\t3"
                                                  for c in range(10)]
    (root / "pairs.txt").write_text("20\n" + "\n".join(lines) + "\n")
    feature_model(classifier).save(str(tmp_path / "lenet_features.keras"))
    out = tmp_path / "eval"
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "evaluate.py"), "--matcher=keras",
           f"--matcher_path={tmp_path / 'lenet_features.keras'}", f"--data_dir={root}",
           f"--pairs={root / 'pairs.txt'}", f"--output_dir={out}", "--align_template=none",
           "--align_size=32", f"--generator={run_dir}", "--ms_ssim_pairs=10"]
    run = forkserver.run(cmd, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("real_verification_accuracy", "recon_verification_accuracy",
                "attack_type1_tar_at_far_1e-03", "attack_type2_tar_at_far_1e-04",
                "ms_ssim_recon", "ms_ssim_real", "feature_cosine_mean"):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics)
    # 30 real + 30 recon, and the v_variation measure's images (at most 30 features x 8 v)
    v_queries = metrics["v_variation_blackbox_queries"]
    assert 0 < v_queries <= 30 * 8
    assert metrics["images"] == 30 and metrics["blackbox_queries"] == 60 + v_queries
    assert (out / "reconstructions.png").exists()
    # the same numbers in-process: the JPEG files read back, F (as a Keras file), G, F again
    from dibigan_tf.data.faces import read_rgb
    used = []                     # evaluate.py's order: first appearance in the pairs file
    for line in lines:
        p = line.split("\t")
        for key in ([(p[0], int(p[1])), (p[0], int(p[2]))] if len(p) == 3
                    else [(p[0], int(p[1])), (p[2], int(p[3]))]):
            if key not in used:
                used.append(key)
    images = np.stack([read_rgb(str(root / lfw_file_name(n, i))) for n, i in used])
    grey = np.round(images.astype(np.float32).mean(axis=-1, keepdims=True)).astype(np.uint8)
    real = lenet.embed(grey)
    recon_feats = lenet.embed(generator(real, seed=0))
    expected = float(np.mean(cosine_similarity_rows(recon_feats, real)))
    assert abs(metrics["feature_cosine_mean"] - expected) < 1e-3, (metrics, expected)
    # rank-1 among the file's 10 people: each image's nearest person centroid of real features
    from dibigan_tf.evaluation.verification import (class_balanced_agreement,
                                                    nearest_centroid_agreement,
                                                    nearest_centroid_labels)
    people = np.array([n for n, _ in used])
    assert metrics["rank1_people"] == 10
    for key, probes in (("recon_rank1", recon_feats), ("real_rank1", real)):
        value = nearest_centroid_agreement(probes, people, real, people)
        assert abs(metrics[key] - value) < 1e-6, (key, metrics[key], value)
        balanced = class_balanced_agreement(people, nearest_centroid_labels(probes, people, real,
                                                                            people))
        assert abs(metrics[f"{key}_balanced"] - balanced) < 1e-6, (key, metrics, balanced)
        # each image left out of its own person's centroid: the gallery without that image
        hits = [nearest_centroid_labels(probes[i:i + 1], people[i:i + 1], real[keep],
                                        people[keep])[0] == people[i]
                for i in range(len(people)) for keep in [np.arange(len(people)) != i]]
        assert abs(metrics[f"{key}_loo"] - np.mean(hits)) < 1e-6, (key, metrics, hits)
    assert metrics["rank1_loo_probes"] == 30 and metrics["rank1_loo_people"] == 10
    _export_and_reconstruct(tmp_path, run_dir, feats, generator)


def _export_and_reconstruct(tmp_path, run_dir, feats, generator):
    """The SavedModel export reloads in a fresh process and gives G's own output; reconstruct.py
    writes one PNG per vector with safe names, inside --out."""
    import numpy as np
    export = tmp_path / "exported"
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "reconstruct.py"),
           f"--generator={run_dir}", f"--export={export}"]
    run = forkserver.run(cmd, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    v = np.random.default_rng(5).standard_normal((6, generator.cfg.latent_dim)).astype(np.float32)
    np.save(tmp_path / "f.npy", feats[:6])
    np.save(tmp_path / "v.npy", v)
    script = ("import sys, numpy as np, tensorflow as tf\n"
              f"m = tf.saved_model.load({str(export)!r})\n"
              f"f = np.load({str(tmp_path / 'f.npy')!r}); v = np.load({str(tmp_path / 'v.npy')!r})\n"
              "out = m.signatures['with_latent'](features=tf.constant(f), v=tf.constant(v))\n"
              f"np.save({str(tmp_path / 'out.npy')!r}, out['images_float'].numpy())\n"
              "a = m.signatures['serving_default'](features=tf.constant(f))['images'].numpy()\n"
              "b = m.signatures['serving_default'](features=tf.constant(f))['images'].numpy()\n"
              "assert a.dtype == np.uint8 and (a == b).all()\n")
    fresh = forkserver.run([sys.executable, "-c", script], timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), generator.float_images(feats[:6], v),
                               atol=1e-5)

    from dibigan_tf.training.export import load_keras_generator
    model, condition = load_keras_generator(str(export))
    keras_out = model(v, condition(feats[:6]), stage=generator.cfg.num_blocks - 1, alpha=1.0,
                      training=False).numpy()
    np.testing.assert_allclose(keras_out, generator.float_images(feats[:6], v), atol=1e-5)

    ids = np.array(["../escape", "/etc/passwd", "a/b", "", "..", "ok", "ok"])
    np.savez(tmp_path / "f.npz", features=feats[:7], ids=ids)
    out = tmp_path / "png"
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "reconstruct.py"),
           f"--generator={export}", f"--features={tmp_path / 'f.npz'}", f"--out={out}"]
    run = forkserver.run(cmd, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 7 and all(p.endswith(".png") for p in written)
    assert not (tmp_path / "escape.png").exists() and not any("/" in p for p in written)
    assert "ok.png" in written and "ok-1.png" in written
