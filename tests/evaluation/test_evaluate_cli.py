"""`experiments/evaluate.py`: any LFW-format folder and pairs file (dlib, with alignment) or an
insightface `.bin` (a Keras matcher); a `.bin` that tries to run code is refused."""
import io
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests import forkserver
from tests.support import ROOT

EVALUATE = os.path.join(ROOT, "experiments", "evaluate.py")


def _run(*args):
    return forkserver.run([sys.executable, EVALUATE] + list(args), timeout=600,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_lfw_folder_and_pairs_with_dlib(tmp_path):
    pytest.importorskip("dlib", reason="dlib-bin is not installed")
    pytest.importorskip("skimage.data", reason="scikit-image ships the face photo")
    from tests.support import write_people as _write_people
    data = tmp_path / "people"
    _write_people(data)          # 6 people x 4 photos (+ one broken file of Person_0)
    lines = ["6"] + [f"Person_{p}\t1\t{k}" for p in (1, 2, 3) for k in (2, 3)] + \
        [f"Person_{p}\t1\tPerson_{p + 1}\t2" for p in (0, 1, 2, 3, 4)] + ["Person_0\t1\tPerson_5\t4"]
    lines.append("Person_0\t9\tPerson_5\t1")   # the broken image: the pair is dropped, counted
    (data / "pairs.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval"
    args = ["--matcher=dlib", f"--data_dir={data}", f"--pairs={data / 'pairs.txt'}",
            f"--output_dir={out}", "--align_size=112"]
    run = _run(*args)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_pairs_positive"] == 6 and metrics["num_pairs_negative"] == 6
    assert metrics["align_pairs_dropped"] == 1 and metrics["align_status_unreadable"] == 1
    assert 0.0 <= metrics["real_verification_accuracy"] <= 1.0
    # rank-1 of the photos among the file's people needs no generator; a reconstruction's does
    assert metrics["rank1_people"] == 6 and 0.0 <= metrics["real_rank1"] <= 1.0
    assert 0.0 <= metrics["real_rank1_balanced"] <= 1.0
    assert "recon_rank1" not in metrics and "recon_rank1_balanced" not in metrics
    assert 0.0 <= metrics["real_rank1_loo"] <= 1.0 and "recon_rank1_loo" not in metrics
    # every person has two or more readable photos in the file but Person_0 (photo 9 is broken)
    assert metrics["rank1_loo_probes"] == metrics["images"] - 1 and metrics["rank1_loo_people"] == 5
    named = set()
    for line in lines[1:]:
        parts = line.split("\t")
        named |= ({(parts[0], parts[1]), (parts[0], parts[2])} if len(parts) == 3
                  else {(parts[0], parts[1]), (parts[2], parts[3])})
    unique = len(named - {("Person_0", "9")})   # every readable image named by a pair
    assert metrics["images"] == unique and metrics["blackbox_queries"] == unique
    again = _run(*args)
    assert again.returncode == 0
    assert json.loads((out / "metrics.json").read_text())["blackbox_queries_this_run"] == 0

    # only the pairs of a run's held-out people, real images at G's 64x64
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "split.json").write_text(json.dumps({
        "train": ["Person_0/Person_0_0001.jpg", "Person_4/Person_4_0001.jpg"],
        "heldout": [f"Person_{p}/Person_{p}_000{k}.jpg" for p in (1, 2, 3) for k in (1, 2)]}))
    held_out = tmp_path / "eval-heldout"
    held = _run(*(args[:3] + [f"--output_dir={held_out}", "--align_size=112",
                              f"--align_cache_dir={out / 'aligned'}", f"--heldout_of={run_dir}",
                              "--image_size=64"]))
    assert held.returncode == 0, (held.stdout + held.stderr)[-3000:]
    metrics = json.loads((held_out / "metrics.json").read_text())
    # positives of Person_1..3 (6) and the negatives (1, 2), (2, 3); the other 5 pairs name
    # Person_0, 4 or 5
    assert metrics["num_pairs_positive"] == 6 and metrics["num_pairs_negative"] == 2
    assert metrics["align_pairs_not_heldout"] == 5 and metrics["image_size"] == 64
    nobody = _run(*(args[:3] + [f"--output_dir={held_out}", f"--heldout_of={tmp_path}"]))
    assert nobody.returncode == 2 and "no split.json" in nobody.stderr


def _bin(path, images, same, protocol=4):
    bins = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=95)
        bins.append(buffer.getvalue())
    path.write_bytes(pickle.dumps((bins, list(same)), protocol=protocol))


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_bin_pairs_with_a_keras_matcher_and_a_malicious_bin(tmp_path):
    from dibigan_tf.keras_compat import keras
    rng = np.random.default_rng(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(8)(x)).save(str(tmp_path / "m.keras"))
    # 10 "people": each a colour; a pair of the same person = two noisy copies of its colour
    people = rng.integers(0, 256, (10, 3))
    images, same = [], []
    for i in range(20):
        a = i % 10
        b = a if i < 10 else (a + 1) % 10
        for person in (a, b):
            noise = rng.normal(0, 8, (40, 40, 3))
            images.append(np.clip(people[person] + noise, 0, 255).astype(np.uint8))
        same.append(a == b)
    _bin(tmp_path / "pairs.bin", images, same)
    out = tmp_path / "eval"
    run = _run("--matcher=keras", f"--matcher_path={tmp_path / 'm.keras'}",
               f"--pairs={tmp_path / 'pairs.bin'}", f"--output_dir={out}",
               "--align_template=none", "--align_size=16")
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_pairs_positive"] == 10 and metrics["num_pairs_negative"] == 10
    assert metrics["images"] == 40 and metrics["blackbox_queries"] == 40
    assert "real_verification_accuracy: " in run.stdout
    # 10 positives then 10 negatives: stratified folds, both TAR definitions with their counts
    assert metrics["fold_layout"] == "stratified" and metrics["flip_tta"] is False
    assert "real_rank1" not in metrics     # a .bin names no people
    assert metrics["real_tar_at_far_impostor_pairs"] == 10
    assert metrics["real_val_cv_impostor_pairs_per_fold"] == 1
    assert 0.0 <= metrics["real_val_cv_at_far_1e-03"] <= 1.0
    # flip test-time augmentation: every mirror is one more query (the store of the first run
    # answers the unflipped images)
    flipped = _run("--matcher=keras", f"--matcher_path={tmp_path / 'm.keras'}",
                   f"--pairs={tmp_path / 'pairs.bin'}", f"--output_dir={tmp_path / 'flip'}",
                   "--align_template=none", "--align_size=16", "--flip_tta",
                   f"--feature_store_dir={out / 'features'}")
    assert flipped.returncode == 0, (flipped.stdout + flipped.stderr)[-3000:]
    flip_metrics = json.loads((tmp_path / "flip" / "metrics.json").read_text())
    assert flip_metrics["flip_tta"] is True
    assert flip_metrics["blackbox_queries"] == 80
    assert flip_metrics["blackbox_queries_this_run"] == 40

    exploit = _Exploit()
    exploit.target = str(tmp_path / "pwned")
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([b"x", b"y"], [exploit])))
    bad = _run("--matcher=keras", f"--matcher_path={tmp_path / 'm.keras'}",
               f"--pairs={tmp_path / 'evil.bin'}", f"--output_dir={tmp_path / 'e2'}")
    assert bad.returncode == 2 and "refuses to load" in bad.stderr
    assert not (tmp_path / "pwned").exists()


def test_make_pairs_draws_folds_of_heldout_people(tmp_path):
    from dibigan_tf.data.faces import read_lfw_pairs
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    held = [f"images/P{p}/P{p}_{k:04d}.jpg" for p in range(6) for k in range(1, 2 + p % 3)]
    held.append("images/odd/notes.txt")   # not an image: skipped, counted
    (run_dir / "split.json").write_text(json.dumps({"train": [], "heldout": held}))
    out = tmp_path / "pairs.txt"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "make_pairs.py"),
                           f"--heldout_of={run_dir}", f"--out={out}", "--positives=100",
                           "--negatives=20", "--folds=4"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 file names" in proc.stdout
    pairs = read_lfw_pairs(str(out))
    pos = [p for p in pairs if p[4]]
    neg = [p for p in pairs if not p[4]]
    # people with 2 images give 1 pair, with 3 images 3: P1, P4 (2) and P2, P5 (3) -> 8
    assert len(pos) == 8 and len(neg) == 20
    names = {f"P{p}": set(range(1, 2 + p % 3)) for p in range(6)}
    for n1, i1, n2, i2, same in pairs:
        assert i1 in names[n1] and i2 in names[n2] and (n1 == n2) == same and (n1, i1) != (n2, i2)
    assert len({tuple(sorted([(a, i), (b, j)])) for a, i, b, j, _ in neg}) == 20   # no repeats
    # 4 folds, each its positives then its negatives
    body = [line.split() for line in out.read_text().splitlines()[1:]]
    kinds = "".join("p" if len(parts) == 3 else "n" for parts in body)
    assert kinds == "pp" + "n" * 5 + "pp" + "n" * 5 + "pp" + "n" * 5 + "pp" + "n" * 5
