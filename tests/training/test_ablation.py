"""`make ablation-digits` driver on a tiny budget: two Table 2 rows share F, F^S, H and the
feature store, and the Markdown table has one line per row."""
import json
import os
import sys

from tests import forkserver
from tests.support import ROOT, TINY, TINY_GAN_FLAGS


def test_ablation_rows_share_stages_and_fill_the_table(tmp_path):
    extra = " ".join(t for t in TINY if not t.startswith("--augment"))
    # the driver, not the training: one G phase, F trained for one epoch
    extra += " " + " ".join(TINY_GAN_FLAGS + ["--matcher_epochs=1"])
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "ablation.py"), "--configs=A,F",
           f"--checkpoint_dir={tmp_path}", "--prefix=t-", f"--extra={extra}"]
    proc = forkserver.run(cmd, timeout=900, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    text = (tmp_path / "t-ablation-digits.md").read_text()
    lines = [l for l in text.splitlines() if l.startswith("| (")]
    assert [l.split("|")[1].strip() for l in lines] == ["(A) PO.GAN", "(F) + L_biject"]
    a = json.loads((tmp_path / "t-digits-A-blackbox" / "report" / "metrics.json").read_text())
    f = json.loads((tmp_path / "t-digits-F-blackbox" / "report" / "metrics.json").read_text())
    assert f"{a['recon_class_agreement']:.4f}" in lines[0]
    assert f"{f['recon_class_agreement']:.4f}" in lines[1]
    # (F) reused (A)'s F, F^S and H: nothing trained again, no training image queried again
    for stage in ("matcher", "student", "flow"):
        done_a = (tmp_path / "t-digits-A-blackbox" / stage / "done.json").read_text()
        assert (tmp_path / "t-digits-F-blackbox" / stage / "done.json").read_text() == done_a
    assert "student: loaded the finished stage" in out and "flow: loaded the finished stage" in out
    # 600 digits once, then each row's 200 reconstructions (fewer when a tiny G draws two
    # identical images: the store keys by content), and each row's v_variation images
    va, vf = a["v_variation_blackbox_queries"], f["v_variation_blackbox_queries"]
    assert 0 < va <= 64 * 8 and 0 <= vf <= 64 * 8
    assert 600 < a["blackbox_queries"] - va <= 800
    assert a["blackbox_queries"] < f["blackbox_queries"] <= a["blackbox_queries"] + 200 + vf
    cfg_a = json.loads((tmp_path / "t-digits-A-blackbox" / "config.json").read_text())
    cfg_f = json.loads((tmp_path / "t-digits-F-blackbox" / "config.json").read_text())
    assert cfg_a["gan"]["generator"] == "pggan" and not cfg_a["gan"]["use_distill"]
    assert cfg_f["gan"]["generator"] == "feature_conditional" and cfg_f["gan"]["use_biject"]
    assert (cfg_a["gan"]["stable_images"], cfg_a["seed"]) == (cfg_f["gan"]["stable_images"],
                                                            cfg_f["seed"])
