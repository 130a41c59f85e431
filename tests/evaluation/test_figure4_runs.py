"""Figure 4 from several runs' saved held-out reconstructions (experiments/figure4.py)."""
import os
import sys

import numpy as np
import pytest
from absl import app
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from dibigan_tf.data.base import ImageSet  # noqa: E402
from dibigan_tf.training.run_report import RECONSTRUCTIONS, save_reconstructions  # noqa: E402
from experiments import figure4  # noqa: E402


def _run(tmp_path, name, value, labels):
    real = np.full((len(labels), 8, 8, 3), 10, np.uint8) + np.arange(len(labels),
                                                                      dtype=np.uint8)[:, None,
                                                                                      None, None]
    recon = np.full_like(real, value)
    held = ImageSet(real, np.asarray(labels), [f"p{l}" for l in sorted(set(labels))])
    save_reconstructions(str(tmp_path / name / "report"), held, recon)
    return str(tmp_path / name)


def test_runs_side_by_side(tmp_path):
    labels = [0, 0, 1, 2, 2]
    a = _run(tmp_path, "wb", 200, labels)
    b = _run(tmp_path, "bb", 100, labels)
    loaded = figure4.load(a)
    assert set(loaded) == {"ids", "labels", "real", "recon"}
    assert os.path.exists(os.path.join(a, "report", RECONSTRUCTIONS))
    grid = figure4.compose({"whitebox": loaded, "blackbox": figure4.load(b)}, count=8)
    # 3 people (one row each), columns: input | whitebox | blackbox | another photo
    assert grid.shape[:2] == (3 * 8, 4 * 8)
    cell = grid.shape[1] // 4
    first_row = grid[:8]
    assert (first_row[:, cell:2 * cell] == 200).all() and (first_row[:, 2 * cell:3 * cell]
                                                            == 100).all()
    out = tmp_path / "f4.png"
    from absl import flags
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["figure4.py", f"--runs={a},{b}", "--titles=whitebox,blackbox", f"--out={out}"])
    assert figure4.main(["figure4.py"]) == 0
    assert Image.open(out).size[0] == grid.shape[1]


def test_runs_on_other_held_out_images_are_refused(tmp_path):
    a = _run(tmp_path, "wb", 200, [0, 0, 1])
    b = _run(tmp_path, "bb", 100, [0, 1, 1, 2])
    with pytest.raises(app.UsageError, match="other held-out images"):
        figure4.compose({"whitebox": figure4.load(a), "blackbox": figure4.load(b)})
