"""`experiments/face_log_row.py`: the face experiment log's row is read from a run's report, its
evaluate.py output and its student metrics, each number in its column, "-" where one is missing."""
import json
import os
import subprocess
import sys

import pytest

from tests.support import ROOT

sys.path.insert(0, ROOT)
from experiments import face_log_row  # noqa: E402


def _write(path, values):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(values, handle)


def test_row_reads_each_measure_from_its_file(tmp_path):
    run = tmp_path / "t9-run"
    _write(run / "report" / "metrics.json", {
        "seconds": {"student": 250.4, "flow": 83.3, "gan": 2243.4},
        "recon_verification_accuracy": 0.768, "recon_class_agreement": 0.10996,
        "feature_cosine_mean": 0.8974, "v_variation": 0.0972})
    cells = face_log_row.log_row(str(run), "none").strip("| ").split(" | ")
    assert cells == ["`t9-run`", "none", "-", "250 s, 83 s, 2,243 s", "0.768", "-", "-", "0.110",
                     "-", "0.897", "0.097"]
    _write(run / "evaluate" / "metrics.json", {
        "attack_type1_tar_at_far_1e-03": 0.11422, "attack_type1_tar_at_far_1e-03_v_mean": 0.1113,
        "attack_type1_tar_at_far_1e-03_v_worst": 0.0625, "attack_type2_tar_at_far_1e-03": 0.04559,
        "ms_ssim_pggan_recon": 0.30682, "recon_rank1": 0.12345,
        "recon_verification_accuracy": 0.9601, "feature_cosine_mean": 0.9314,
        "v_variation": 0.3898})
    _write(run / "student" / "metrics.json", {
        "student_cosine_heldout_centred": 0.4595, "student_verification_accuracy": 0.821,
        "student_tar_at_far_1e-03": 0.072})
    cells = face_log_row.log_row(str(run)).strip("| ").split(" | ")
    assert cells[2] == "0.460 / 0.821 / 0.072"
    # evaluate.py's value where it measured one (rank-1, verification, F cosine, v_variation),
    # else the report's (the first row above)
    assert cells[4:] == ["0.960", "0.114 (0.111 / 0.062)", "0.046", "0.123", "0.307", "0.931",
                         "0.390"]
    assert len(cells) == face_log_row.HEADER.count(" | ") + 1
    # the per-person mean of rank-1 beside it when evaluate.py measured that too
    _write(run / "evaluate" / "metrics.json", {"recon_rank1": 0.12345,
                                               "recon_rank1_balanced": 0.0987})
    assert face_log_row.log_row(str(run)).strip("| ").split(" | ")[7] == "0.123 (0.099)"


def test_a_run_without_a_report_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no report/metrics.json"):
        face_log_row.log_row(str(tmp_path / "empty"))
    run = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "face_log_row.py"),
                          f"--runs={tmp_path / 'empty'}"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1 and run.stderr.strip().startswith("error: ")
    assert "Traceback" not in run.stderr
