"""The paper's Figure 4 from several finished runs on the same held-out images: input | each
run's reconstruction | another photo of the same person, one row per person.

    python experiments/figure4.py --runs=checkpoints/lfw-whitebox-dlib,checkpoints/lfw-blackbox-dlib \
        --titles=whitebox,blackbox --out=figure4-whitebox-blackbox.png

Reads each run's `report/heldout_reconstructions.npz` (written with the report); the runs must
hold the same held-out images in the same order (the same data, seed and held-out share), or it
stops with a one-line reason.
"""
import os
import sys

import numpy as np
from absl import app, flags
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", [], "Run directories, in column order.")
flags.DEFINE_list("titles", [], "A title per run (default: the runs' folder names).")
flags.DEFINE_string("out", "figure4.png", "The PNG written.")
flags.DEFINE_integer("count", 8, "Rows (people).", lower_bound=1)


def load(run_dir):
    from dibigan_tf.training.run_report import RECONSTRUCTIONS
    path = os.path.join(run_dir, "report", RECONSTRUCTIONS)
    if not os.path.exists(path):
        raise app.UsageError(f"{path}: not found (a finished run writes it with its report)")
    with np.load(path) as data:
        return {k: data[k] for k in ("ids", "labels", "real", "recon")}


def compose(runs: dict, count: int = 8):
    """uint8 grid of Figure 4 from {title: loaded npz}; the first run's real images are the
    input column."""
    from dibigan_tf.evaluation.figures import figure4
    titles = list(runs)
    first = runs[titles[0]]
    for title in titles[1:]:
        if not np.array_equal(runs[title]["ids"], first["ids"]):
            raise app.UsageError(f"{title} holds other held-out images than {titles[0]} (another "
                                 f"split: same data, --seed and --heldout_fraction needed)")
    others = {title: runs[title]["recon"] for title in titles[1:]}
    return figure4(first["real"], first["recon"], first["labels"], others=others, count=count)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.runs:
        raise app.UsageError("--runs: give at least one run directory")
    titles = FLAGS.titles or [os.path.basename(os.path.normpath(r)) for r in FLAGS.runs]
    if len(titles) != len(FLAGS.runs):
        raise app.UsageError(f"{len(FLAGS.runs)} runs but {len(titles)} titles")
    grid = compose({t: load(r) for t, r in zip(titles, FLAGS.runs)}, FLAGS.count)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(FLAGS.out)
    print(f"columns: input | {' | '.join(titles)} | another photo of the person")
    print(f"figure: {FLAGS.out}")
    return 0


if __name__ == "__main__":
    app.run(main)
