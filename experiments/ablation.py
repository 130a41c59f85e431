"""The paper's Table 2 ablation on digits, blackbox mode: configurations (A)-(F), same seed and
budget, one Markdown table.

    python experiments/ablation.py [--configs=A,B,C,D,E,F] [--extra="--flag=value ..."]

Each configuration is `experiments/train.py --flagfile=experiments/flagfiles/digits_<X>_blackbox.flags`
run in its own process. The first configuration that runs trains the matcher F, the student F^S,
the bijection H and the feature store; every later one starts from copies of those stages (so all
rows share F, F^S, H and the split, and differ only in G/D), and F is queried once per image across
the whole ablation. A finished configuration is not trained again; an interrupted one resumes.
Writes `<checkpoint_dir>/ablation-digits.md` and `.json`.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import table2  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", list("ABCDEF"), "Table 2 rows to run, in order.")
flags.DEFINE_string("checkpoint_dir", "checkpoints", "Where runs are written.")
flags.DEFINE_string("flagfile_pattern", "experiments/flagfiles/digits_{}_blackbox.flags",
                    "Flagfile of each row ({} is the letter).")
flags.DEFINE_string("extra", "", "More flags for every run (quoted), e.g. a smaller budget.")
flags.DEFINE_string("prefix", "", "Prefix of the run names (default: the flagfiles' names).")

SHARED = ("matcher", "student", "flow", "features", "split.json")
#: Table 2's name of each row (the rows themselves: experiments/table2.py)
ROWS = {letter: title for letter, (title, _, _) in table2.ROWS.items()}
COLUMNS = (("recon_verification_accuracy", "recon. verification acc."),
           ("recon_class_agreement", "recon. class agreement"),
           ("feature_cosine_mean", "F cosine"),
           ("recon_tar_at_far_1e-03", "TAR@FAR=1e-3"))


def _run_name(letter):
    with open(os.path.join(ROOT, FLAGS.flagfile_pattern.format(letter))) as handle:
        for line in handle:
            if line.startswith("--run_name="):
                return FLAGS.prefix + line.strip().split("=", 1)[1]
    raise app.UsageError(f"{FLAGS.flagfile_pattern.format(letter)} names no --run_name")


def _share_stages(source_dir, target_dir):
    """Copies the finished non-GAN stages of `source_dir` into a new run `target_dir`."""
    os.makedirs(target_dir, exist_ok=True)
    for name in SHARED:
        src, dst = os.path.join(source_dir, name), os.path.join(target_dir, name)
        if os.path.exists(dst) or not os.path.exists(src):
            continue
        (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, dst)


def table(results):
    """Markdown table of the rows that finished, in Table 2's order."""
    head = "| configuration | " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    real = next((m for m in results.values() if m), None)
    if real:
        lines.append("| real held-out digits | "
                     + f"{real['real_verification_accuracy']:.4f} | "
                     + f"{real['real_class_agreement']:.4f} | 1 | "
                     + f"{real['real_tar_at_far_1e-03']:.4f} |")
    for letter in sorted(results):
        m = results[letter]
        cells = [f"{m[key]:.4f}" if key in m else "-" for key, _ in COLUMNS]
        lines.append(f"| {ROWS[letter]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    bad = [c for c in FLAGS.configs if c not in ROWS]
    if bad:
        raise app.UsageError(f"unknown configurations {bad}; choose from {sorted(ROWS)}")
    results, first_dir = {}, None
    for letter in FLAGS.configs:
        run = _run_name(letter)
        run_dir = os.path.join(FLAGS.checkpoint_dir, run)
        if first_dir is not None:
            _share_stages(first_dir, run_dir)
        cmd = [sys.executable, os.path.join(ROOT, "experiments", "train.py"),
               f"--flagfile={FLAGS.flagfile_pattern.format(letter)}",
               f"--checkpoint_dir={FLAGS.checkpoint_dir}", f"--run_name={run}"]
        cmd += shlex.split(FLAGS.extra)
        print(f"== {ROWS[letter]}: {' '.join(cmd[1:])}", flush=True)
        code = subprocess.call(cmd, cwd=ROOT)
        if code != 0:
            print(f"error: configuration {letter} failed (exit {code}); see its log above",
                  file=sys.stderr)
            return code
        with open(os.path.join(run_dir, "report", "metrics.json")) as handle:
            results[letter] = json.load(handle)
        first_dir = first_dir or run_dir
    text = ("Table 2 on digits, blackbox mode (held-out digits, scored by the blackbox F; "
            "same seed, F, F^S, H and budget in every row)\n\n" + table(results))
    os.makedirs(FLAGS.checkpoint_dir, exist_ok=True)
    out = os.path.join(FLAGS.checkpoint_dir, f"{FLAGS.prefix}ablation-digits")
    with open(out + ".md", "w") as handle:
        handle.write(text)
    with open(out + ".json", "w") as handle:
        json.dump({ROWS[k]: {key: v.get(key) for key, _ in COLUMNS} for k, v in results.items()},
                  handle, indent=2)
    print(text)
    print(f"table: {out}.md")
    return 0


if __name__ == "__main__":
    app.run(main)
