"""Figure 3 under each reading of Eq. 4 and each weight of L_biject, on the same G seeds, and one
Markdown table of the results.

    python experiments/figure3_sweep.py --readings=spatial,spatial_full,latent \
        --alphas=0.001,0.01,0.1 [--run_flagfile=experiments/flagfiles/digits_figure3.flags]

Each (reading, alpha) is `experiments/train.py --flagfile=... --stage=figure3 --biject_reading=R
--alpha_b=A` in its own run `<prefix>fig3-<R>-a<A>`. The G trained *without* L_biject of a seed
does not depend on the reading or the weight (L_biject is off for it, and alpha only scales
L_biject), so it is trained once, by the first run, and copied into every later run with the
matcher, the feature store, F^S and the split (each run then trains only its G with L_biject);
H comes from the flagfile's `--flow_from_run`. With `--extra=--generator=pggan` the runs are
Table 2's (C) (PO.GAN + L_distill + L_biject) and their G without L_biject is (B), so the sweep
measures the (B)->(C) step as the default configuration measures (E)->(F); `--share_from` lets
such a sweep start from the first sweep's F, F^S, store and split. A finished run is not
trained again; an interrupted one resumes. Writes `<checkpoint_dir>/<prefix>figure3-sweep.md` and `.json`: for each
run, the mean and standard deviation over the G seeds of the intra/inter distance ratio of the
reconstructions' F features and H latents, their class agreement and their reconstruction
verification accuracy, with and without L_biject.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_list("readings", ["spatial", "spatial_full", "latent"], "Readings of Eq. 4.")
flags.DEFINE_list("alphas", ["0.001"], "Weights alpha of L_biject (--alpha_b).")
flags.DEFINE_string("run_flagfile", "experiments/flagfiles/digits_figure3.flags",
                    "The run's flagfile (a configuration (F) run with --figure3_seeds).")
flags.DEFINE_string("checkpoint_dir", "checkpoints", "Where runs are written.")
flags.DEFINE_string("prefix", "", "Prefix of the run names and of the table's file.")
flags.DEFINE_string("extra", "", "More flags for every run (quoted), e.g. a smaller budget, "
                    "or --generator=pggan for Table 2's (B)->(C) step.")
flags.DEFINE_string("share_from", "", "A finished run whose matcher, student, feature store and "
                    "split the first run starts with (e.g. another sweep's first run, so that "
                    "two sweeps share F, F^S and the split and F is queried once).")

#: stages that do not depend on the reading or the weight, copied from the first run
SHARED = ("matcher", "student", "features", "split.json")
#: (key in report/metrics.json, column title)
MEASURES = (("biject_intra_inter_ratio_{}", "intra/inter, F features"),
            ("biject_intra_inter_ratio_{}_h", "intra/inter, H latents"),
            ("biject_recon_class_agreement_{}", "class agreement"),
            ("biject_recon_verification_accuracy_{}", "recon. verification"))


def run_name(reading, alpha):
    return f"{FLAGS.prefix}fig3-{reading}-a{alpha}"


#: shared pieces without an end marker, ready once they exist: the feature store (one answer
#: per image, appended as images come) and the split; every trained stage writes a done.json
UNMARKED = ("features", "split.json")


def finished(path):
    """A trained stage's directory with its done.json, or the store or split that exists."""
    if os.path.basename(os.path.normpath(path)) in UNMARKED:
        return os.path.exists(path)
    return os.path.exists(os.path.join(path, "done.json"))


def share_stages(source_dir, target_dir, with_gan=True):
    """Copies into a new run what the first run trained and this one would train the same way:
    the matcher, the store, F^S, the split and (`with_gan`) every finished G without L_biject."""
    os.makedirs(target_dir, exist_ok=True)
    names = list(SHARED) + sorted(n for n in os.listdir(source_dir)
                                  if with_gan and n.startswith("gan_without_biject") and
                                  finished(os.path.join(source_dir, n)))
    for name in names:
        src, dst = os.path.join(source_dir, name), os.path.join(target_dir, name)
        if os.path.exists(dst) or not os.path.exists(src):
            continue
        (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, dst)


def _mean_sd(metrics, key):
    values = metrics.get(key + "_per_seed", [metrics[key]] if key in metrics else [])
    if not values:
        return None, None, 0
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return float(np.mean(values)), sd, len(values)


def table(results):
    """Markdown: one row per run and side (without / with L_biject), mean +- SD over seeds."""
    head = ("| reading | alpha | L_biject | seeds | "
            + " | ".join(title for _, title in MEASURES) + " |")
    lines = [head, "|" + "---|" * (len(MEASURES) + 4)]
    for (reading, alpha), metrics in results.items():
        for side in ("without", "with"):
            cells, seeds = [], 0
            for key, _ in MEASURES:
                mean, sd, n = _mean_sd(metrics, key.format(side))
                seeds = max(seeds, n)
                cells.append("-" if mean is None else f"{mean:.4f} +- {sd:.4f}")
            lines.append(f"| {reading} | {alpha} | {side} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    sys.path.insert(0, ROOT)
    from dibigan_tf.config import BIJECT_READINGS
    bad = [r for r in FLAGS.readings if r not in BIJECT_READINGS]
    if bad:
        raise app.UsageError(f"unknown readings {bad}; choose from {list(BIJECT_READINGS)}")
    try:
        alphas = [str(float(a)) for a in FLAGS.alphas]
    except ValueError:
        raise app.UsageError(f"--alphas must be numbers, got {FLAGS.alphas}") from None
    checkpoint_dir = os.path.abspath(FLAGS.checkpoint_dir)
    unfinished = [name for name in SHARED
                  if FLAGS.share_from and not finished(os.path.join(FLAGS.share_from, name))]
    if unfinished:
        raise app.UsageError(f"--share_from={FLAGS.share_from}: {', '.join(unfinished)} not "
                             f"finished there (a trained stage needs its done.json, the store and the "
                             f"split must exist)")
    results, first = {}, None
    for reading in FLAGS.readings:
        for alpha in alphas:
            name = run_name(reading, alpha)
            run_dir = os.path.join(checkpoint_dir, name)
            if first is not None:
                share_stages(first, run_dir)
            elif FLAGS.share_from:
                share_stages(FLAGS.share_from, run_dir, with_gan=False)
            cmd = [sys.executable, os.path.join(ROOT, "experiments", "train.py"),
                   f"--flagfile={FLAGS.run_flagfile}", "--stage=figure3", f"--run_name={name}",
                   f"--checkpoint_dir={checkpoint_dir}", f"--biject_reading={reading}",
                   f"--alpha_b={alpha}"] + shlex.split(FLAGS.extra)
            print(f"== {name}: {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
            if subprocess.run(cmd, cwd=ROOT).returncode != 0:
                print(f"error: {name} failed (its log is above); the table has the runs that "
                      f"finished", file=sys.stderr)
                break
            with open(os.path.join(run_dir, "report", "metrics.json")) as handle:
                results[(reading, alpha)] = json.load(handle)
            first = first or run_dir
    text = table(results)
    out = os.path.join(checkpoint_dir, f"{FLAGS.prefix}figure3-sweep")
    with open(out + ".md", "w") as handle:
        handle.write(text)
    with open(out + ".json", "w") as handle:
        json.dump({f"{r}/{a}": m for (r, a), m in results.items()}, handle, indent=2,
                  sort_keys=True, default=str)
    print(text)
    print(f"table: {out}.md")
    return 0 if len(results) == len(FLAGS.readings) * len(alphas) else 1


if __name__ == "__main__":
    app.run(main)
