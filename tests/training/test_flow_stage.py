"""H trained on its own (`train.py --stage=flow`) and loaded by a later run
(`--flow_from_run`), which then trains no H of its own."""
import json
import os
import subprocess
import sys

from tests.training.test_pipeline_resume import ROOT, TINY


def _run(tmp_path, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "train.py"),
           f"--flagfile={os.path.join(ROOT, 'experiments', 'flagfiles', 'digits_blackbox.flags')}",
           f"--checkpoint_dir={tmp_path}"] + TINY + ["--stable_images=64,128"] + list(extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_flow_stage_alone_then_loaded_by_a_run(tmp_path):
    flow_only = _run(tmp_path, "--run_name=h", "--stage=flow")
    out = flow_only.stdout + flow_only.stderr
    assert flow_only.returncode == 0, out[-3000:]
    h_dir = tmp_path / "h"
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

    # a run loading this H trains none of its own and reports the same held-out bpd
    run = _run(tmp_path, "--run_name=r", f"--flow_from_run={h_dir}")
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert not (tmp_path / "r" / "flow").exists()
    report = json.loads((tmp_path / "r" / "report" / "metrics.json").read_text())
    assert not any(k.startswith("biject_") for k in report)
    assert report["seconds"]["flow"] == 0.0
    assert abs(report["flow_bits_per_dim"] - metrics["flow_bits_per_dim"]) < 1e-4

    # Figure 3 on the finished run: a second G without L_biject, both projected and compared
    fig = _run(tmp_path, "--run_name=r", f"--flow_from_run={h_dir}", "--stage=figure3")
    assert fig.returncode == 0, (fig.stdout + fig.stderr)[-3000:]
    assert (tmp_path / "r" / "gan_without_biject" / "done.json").exists()
    assert (tmp_path / "r" / "report" / "figure3.png").stat().st_size > 1000
    report = json.loads((tmp_path / "r" / "report" / "metrics.json").read_text())
    for key in ("biject_intra_inter_ratio_without", "biject_intra_inter_ratio_with",
                "biject_intra_inter_ratio_without_h", "biject_intra_inter_ratio_with_h"):
        assert 0.0 < report[key] < 2.0, (key, report)
    # a report written again for the same G keeps the Figure 3 keys; for a retrained G it drops them
    from dibigan_tf.training.pipeline import _extra_report_keys
    kept = _extra_report_keys(str(tmp_path / "r" / "report"), str(tmp_path / "r"))
    assert kept["biject_intra_inter_ratio_with"] == report["biject_intra_inter_ratio_with"]
    done = tmp_path / "r" / "gan" / "done.json"
    done.write_text(done.read_text().replace('"step"', '"step_of_another_run"'))
    assert _extra_report_keys(str(tmp_path / "r" / "report"), str(tmp_path / "r")) == {}
