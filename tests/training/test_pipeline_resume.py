"""End to end: the blackbox pipeline on a small slice of the digits, killed with SIGKILL in the
middle of the GAN stage and resumed by running the same command again. The run starts with the
session's shared matcher, feature store, F^S and H (tests/conftest.py: tiny_base), which it loads
as finished stages."""
import json
import os
import re
import signal

from tests import forkserver
from tests.support import (TINY_KILLABLE, StepReached, copy_stages, latest_step as _latest_step,
                           train_command)


#: G/D's phases: 16x16 64 images, the fade-in 64, 32x32 256 (4 + 4 + 16 steps of 16, a
#: checkpoint after each); the run is killed at step 10 or later, in the last phase
IMAGES = ["--stable_images=64,256", "--fade_images=0,64"]


def _command(tmp_path):
    return train_command([f"--checkpoint_dir={tmp_path}", "--run_name=tiny"] + TINY_KILLABLE +
                         IMAGES)


def test_sigkill_in_gan_stage_resumes_from_last_checkpoint(tmp_path, tiny_base):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    run_dir = tmp_path / "tiny"
    copy_stages(tiny_base, run_dir)
    step_10 = StepReached(run_dir / "gan" / "ckpt", 10)
    first = forkserver.run(_command(tmp_path), env=env, timeout=600, kill_when=step_10)
    killed_at = step_10.seen
    assert first.returncode == -signal.SIGKILL and killed_at >= 10, (
        first.returncode, (first.stdout + first.stderr)[-3000:])
    assert not (run_dir / "gan" / "done.json").exists()
    before = {s: os.path.getmtime(run_dir / s / "done.json") for s in ("matcher", "student", "flow")}
    last_saved = _latest_step(str(run_dir / "gan" / "ckpt"))

    second = forkserver.run(_command(tmp_path), env=env, timeout=600)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-3000:]
    # the step counter continues from the checkpoint instead of restarting
    match = re.search(r"gan: resuming at step (\d+)", output)
    assert match, output[-3000:]
    assert int(match.group(1)) == last_saved >= killed_at
    with open(run_dir / "gan" / "done.json") as handle:
        done = json.load(handle)
    assert done["step"] == 64 // 16 + 64 // 16 + 256 // 16   # as an uninterrupted run
    assert done["images_seen"] == 64 + 64 + 256
    # finished stages were loaded, not trained again
    after = {s: os.path.getmtime(run_dir / s / "done.json") for s in before}
    assert after == before

    with open(run_dir / "report" / "metrics.json") as handle:
        metrics = json.load(handle)
    for key in ("real_verification_accuracy", "recon_verification_accuracy",
                "recon_class_agreement", "feature_cosine_mean", "blackbox_queries", "seconds",
                "flow_bits_per_dim"):
        assert key in metrics
    assert "recon_class_agreement_loo" not in metrics    # digits: the training split's centroids
    # every image queried once, ever: 400 training + 400 affine copies + 200 held-out, then 200
    # reconstructions (the resumed run drew the same copies and queried none of them again),
    # and the v_variation measure's 64 features x 8 draws of v (fewer if two images are equal)
    v_queries = metrics["v_variation_blackbox_queries"]
    assert 0 < v_queries <= 64 * 8
    assert metrics["blackbox_queries"] == 400 + 400 + 200 + 200 + v_queries
    assert metrics["blackbox_queries_training_images"] == 400 + 400 + 200
    assert set(metrics["seconds"]) >= {"matcher", "student", "flow", "gan", "evaluate"}
    assert (run_dir / "report" / "reconstructions.png").exists()
    assert "recon_verification_accuracy" in (run_dir / "report" / "report.md").read_text()
