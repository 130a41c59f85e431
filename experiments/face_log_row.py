"""One row of the face experiment log (docs/experiment-log-faces.md) from a finished face run:
what the face recipe is judged on, read from the run's report and from `evaluate.py` over
`make_pairs.py` pairs of its held-out (or, under --tuning_split, tuning) people.

    python experiments/make_pairs.py --heldout_of=checkpoints/<run> --out=<run>/eval_pairs.txt
    python experiments/evaluate.py --matcher=dlib_keras --data_dir=<root> \\
        --pairs=<run>/eval_pairs.txt --generator=checkpoints/<run> \\
        --heldout_of=checkpoints/<run> --image_size=<G's size> --output_dir=<run>/evaluate
    python experiments/face_log_row.py --runs=checkpoints/<run>[,...] [--change="..."]

Columns: F^S on the held-out people (centred cosine, verification, TAR at FAR 1e-3; from
`<run>/student/metrics.json` when `--stage=student` wrote it), the stages' training seconds,
reconstruction verification, type-I attack TAR at FAR 1e-3 with its mean and worst over the
draws of v, type-II, rank-1 (with, where evaluate.py measured it, the mean over people of each
person's rank-1), MS-SSIM of reconstructions of different people (PGGAN definition),
the mean cosine of F(reconstruction) to F(input), and v_variation. Where evaluate.py measured a
quantity (on the `make_pairs.py` pairs and every image of the held-out people) its value is the
cell; otherwise the report's (verification on its balanced pairs, `recon_class_agreement` for
rank-1: the same nearest-centroid rule over the report's images). A missing measure is "-",
never a guess.
"""
import json
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
    """The script's flags, defined only when it runs (importing `log_row` defines none, so it
    can sit beside other scripts' flags in one process)."""
    flags.DEFINE_list("runs", [], "Finished face run directories.")
    flags.DEFINE_string("change", "", "What the run changes (the row's second cell).")
    flags.DEFINE_string("evaluate_dir", "evaluate", "evaluate.py's --output_dir, relative to "
                        "the run.")


HEADER = ("| run | change | F^S held-out: centred cosine / verification / TAR@1e-3 | "
          "time (F^S, H, G/D) | recon verification | type-I TAR@1e-3 (v mean / worst) | "
          "type-II | rank-1 (per person) | MS-SSIM recon | F cosine | v_variation |")


def _read(path):
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


def _num(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def _seconds(value):
    return "-" if value is None else f"{value:,.0f} s"


def log_row(run_dir: str, change: str = "", evaluate_dir: str = "evaluate") -> str:
    """The Markdown row of one run (see the module docstring)."""
    report = _read(os.path.join(run_dir, "report", "metrics.json"))
    if not report:
        raise ValueError(f"{run_dir}: no report/metrics.json (not a finished run)")
    attack = _read(os.path.join(run_dir, evaluate_dir, "metrics.json"))
    student = _read(os.path.join(run_dir, "student", "metrics.json"))
    seconds = report.get("seconds", {})
    fs = " / ".join(_num(student.get(k)) for k in (
        "student_cosine_heldout_centred", "student_verification_accuracy",
        "student_tar_at_far_1e-03")) if student else "-"
    type1 = attack.get("attack_type1_tar_at_far_1e-03")
    type1_cell = "-" if type1 is None else (
        f"{type1:.3f} ({_num(attack.get('attack_type1_tar_at_far_1e-03_v_mean'))} / "
        f"{_num(attack.get('attack_type1_tar_at_far_1e-03_v_worst'))})")

    def measured(key, report_key=None):
        """evaluate.py's value of `key`, else the report's (of `report_key`, default `key`)."""
        return _num(attack.get(key, report.get(report_key or key)))

    rank1_cell = measured("recon_rank1", "recon_class_agreement")
    if "recon_rank1_balanced" in attack:      # evaluate.py writes it beside recon_rank1
        rank1_cell += f" ({_num(attack['recon_rank1_balanced'])})"

    cells = [f"`{os.path.basename(os.path.normpath(run_dir))}`", change or "-", fs,
             ", ".join(_seconds(seconds.get(k)) for k in ("student", "flow", "gan")),
             measured("recon_verification_accuracy"), type1_cell,
             _num(attack.get("attack_type2_tar_at_far_1e-03")),
             rank1_cell,
             _num(attack.get("ms_ssim_pggan_recon")),
             measured("feature_cosine_mean"), measured("v_variation")]
    return "| " + " | ".join(cells) + " |"


def main(argv):
    del argv
    if not FLAGS.runs:
        sys.exit("error: --runs=<run dir>[,...] is required")
    print(HEADER)
    print("|" + "---|" * HEADER.count(" | ") + "---|")
    for run in FLAGS.runs:
        try:
            print(log_row(run, FLAGS.change, FLAGS.evaluate_dir))
        except ValueError as error:
            sys.exit(f"error: {error}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
