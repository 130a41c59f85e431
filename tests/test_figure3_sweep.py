"""experiments/figure3_sweep.py: the runs of a sweep share what does not depend on the reading or
the weight (above all the G trained without L_biject), and the table gives mean and SD over the
G seeds. The training itself is replaced by a stand-in that writes a report; the figure3 stage
is tested end to end in tests/training/test_flow_stage.py."""
import json
import os
import subprocess
import sys

import pytest
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import figure3_sweep  # noqa: E402


def _fake_train(seen):
    def run(cmd, cwd=None):
        args = dict(a[2:].split("=", 1) for a in cmd[2:] if a.startswith("--") and "=" in a)
        run_dir = os.path.join(args["checkpoint_dir"], args["run_name"])
        seen.append((args["run_name"], sorted(os.listdir(run_dir)) if os.path.isdir(run_dir)
                     else []))
        shift = {"spatial": 0.0, "latent": 0.1}[args["biject_reading"]]
        for stage in ("matcher", "student", "features", "gan", "gan_without_biject",
                      "gan_without_biject_seed1"):
            os.makedirs(os.path.join(run_dir, stage), exist_ok=True)
            with open(os.path.join(run_dir, stage, "done.json"), "w") as handle:
                handle.write("{}")
        metrics = {}
        for side, base in (("without", 0.5), ("with", 0.4 - shift)):
            for key, _ in figure3_sweep.MEASURES:
                metrics[key.format(side) + "_per_seed"] = [base, base + 0.2]
                metrics[key.format(side)] = base + 0.1
        os.makedirs(os.path.join(run_dir, "report"), exist_ok=True)
        with open(os.path.join(run_dir, "report", "metrics.json"), "w") as handle:
            json.dump(metrics, handle)
        return subprocess.CompletedProcess(cmd, 0)
    return run


def test_sweep_shares_the_g_without_l_biject_and_tabulates_mean_and_sd(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(figure3_sweep.subprocess, "run", _fake_train(seen))
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["figure3_sweep.py", "--readings=spatial,latent", "--alphas=0.001",
                 f"--checkpoint_dir={tmp_path}", "--prefix=t-"])
    assert figure3_sweep.main(["figure3_sweep.py"]) == 0
    # the first run trains everything; the second starts with its copies, no G with L_biject
    assert seen[0] == ("t-fig3-spatial-a0.001", [])
    assert seen[1] == ("t-fig3-latent-a0.001", ["features", "gan_without_biject",
                                                "gan_without_biject_seed1", "matcher",
                                                "student"])
    text = (tmp_path / "t-figure3-sweep.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| spatial") or
            line.startswith("| latent")]
    assert len(rows) == 4
    # two seeds 0.4 and 0.6 (spatial, with): mean 0.5, sample SD 0.1414; latent 0.1 lower
    assert "| spatial | 0.001 | with | 2 | 0.5000 +- 0.1414 |" in text
    assert "| latent | 0.001 | with | 2 | 0.4000 +- 0.1414 |" in text
    saved = json.loads((tmp_path / "t-figure3-sweep.json").read_text())
    assert set(saved) == {"spatial/0.001", "latent/0.001"}


def test_unknown_reading_is_refused_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setattr(figure3_sweep.subprocess, "run", _fake_train([]))
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["figure3_sweep.py", "--readings=spatial,mirror", f"--checkpoint_dir={tmp_path}"])
    from absl import app
    with pytest.raises(app.UsageError, match="unknown readings"):
        figure3_sweep.main(["figure3_sweep.py"])
    assert not os.listdir(tmp_path)


def test_share_from_starts_the_first_run_with_another_runs_f_but_not_its_g(tmp_path,
                                                                          monkeypatch):
    """Table 2's (B)->(C) sweep (--extra=--generator=pggan) reuses the first sweep's F, F^S,
    store and split; its G without L_biject is (B), not the other sweep's (E), so it is trained."""
    seen = []
    monkeypatch.setattr(figure3_sweep.subprocess, "run", _fake_train(seen))
    source = tmp_path / "t-fig3-spatial-a0.001"
    for name in ("matcher", "student", "features", "gan_without_biject"):
        (source / name).mkdir(parents=True)
        if name != "features":    # a real feature store has shards, no done.json
            (source / name / "done.json").write_text("{}")
    (source / "features" / "shard-00000.npz").write_bytes(b"")
    (source / "split.json").write_text("{}")
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["figure3_sweep.py", "--readings=spatial,latent", "--alphas=0.001",
                 f"--checkpoint_dir={tmp_path}", "--prefix=pggan-", f"--share_from={source}",
                 "--extra=--generator=pggan"])
    assert figure3_sweep.main(["figure3_sweep.py"]) == 0
    assert seen[0] == ("pggan-fig3-spatial-a0.001",
                       ["features", "matcher", "split.json", "student"])
    # the second run of the sweep shares the first's own G without L_biject, as before
    assert "gan_without_biject" in seen[1][1]


def test_share_from_without_finished_stages_is_refused(tmp_path, monkeypatch):
    """Every shared stage is there, but the matcher never finished (no done.json)."""
    monkeypatch.setattr(figure3_sweep.subprocess, "run", _fake_train([]))
    half = tmp_path / "half"
    for name in ("matcher", "student", "features"):
        (half / name).mkdir(parents=True)
        if name == "student":
            (half / name / "done.json").write_text("{}")
    (half / "split.json").write_text("{}")
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["figure3_sweep.py", "--readings=spatial", f"--checkpoint_dir={tmp_path}",
                 f"--share_from={tmp_path / 'half'}"])
    from absl import app
    with pytest.raises(app.UsageError, match="share_from=.*: matcher not finished"):
        figure3_sweep.main(["figure3_sweep.py"])
    assert sorted(os.listdir(tmp_path)) == ["half"]
