"""`train.py --stage=align --dataset=celeba`: CelebA's identity file and in-the-wild photos
(written by the test from a real face photo), aligned once, counted, cached."""
import numpy as np
import pytest
from PIL import Image

from tests.support import run_train

pytest.importorskip("dlib", reason="dlib-bin is not installed")
astronaut = pytest.importorskip("tests.matchers.test_dlib").astronaut


def test_celeba_alignment_stage(tmp_path):
    root = tmp_path / "celeba"
    (root / "images").mkdir(parents=True)
    photo = Image.fromarray(astronaut())
    lines = []
    for i in range(6):
        canvas = np.zeros((320, 480, 3), np.uint8)
        face = np.asarray(photo.resize((260, 260)))
        canvas[30:290, 40 + 20 * i:300 + 20 * i] = face
        Image.fromarray(canvas).save(root / "images" / f"{i + 1:06d}.jpg", quality=90)
        lines.append(f"{i + 1:06d}.jpg {100 + i % 2}")
    Image.new("RGB", (200, 200), (90, 90, 90)).save(root / "images" / "000007.jpg")  # no face
    lines += ["000007.jpg 100", "000008.jpg 101"]                                 # missing file
    (root / "identity.txt").write_text("\n".join(lines) + "\n")
    args = ["--dataset=celeba", f"--data_dir={root}", "--matcher=dlib", "--stage=align",
            "--align_size=64", f"--checkpoint_dir={tmp_path / 'ck'}", "--run_name=align"]
    run = run_train(args, flagfile=None, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert "aligned: 6\n" in run.stdout and "images: 7\n" in run.stdout
    assert "status_none: 1" in run.stdout and "listed_missing: 1" in run.stdout
    assert "identities: 2" in run.stdout and "photos_per_second" in run.stdout
    again = run_train(args, flagfile=None, timeout=300)
    assert again.returncode == 0 and "aligned_this_pass: 0" in again.stdout
