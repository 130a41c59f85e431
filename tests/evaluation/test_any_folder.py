"""evaluate.py and make_pairs.py on any identity folder: ORL's layout (s1/1.pgm ... s1/10.pgm),
PNG/GIF folders with free file names (pairs by folder and natural-order index), non-image files
skipped and counted; the edge cases each a clear one-line error or a warning in metrics.json
(a folder as --pairs, a Latin-1 pairs file, every pair dropped, one-class pairs refused before
any query, fewer than 100 pairs). The matcher is an HTTP service on 127.0.0.1 (no dlib)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dibigan_tf.data.base import DataError
from dibigan_tf.data.faces import PairFiles, numbered_images, read_lfw_pairs
from tests import forkserver
from tests.support import ROOT


def _mixed_folder(root):
    """ORL-like s1..s3 (1.pgm .. 10.pgm, grey) and PNG/GIF people with free names; one text file
    per folder that is not an image. Person k's images are all of grey level 20k + i."""
    for k in (1, 2, 3):
        folder = root / f"s{k}"
        folder.mkdir(parents=True)
        for i in range(1, 11):
            Image.fromarray(np.full((12, 10), 20 * k + i, np.uint8)).save(folder / f"{i}.pgm")
        (folder / "README.txt").write_text("not an image")
    for k, (name, files) in enumerate({"alice": ["front.png", "IMG 2.PNG", "side-3.gif"],
                                       "bob": ["b.png", "a.png"]}.items(), start=4):
        folder = root / name
        folder.mkdir()
        for i, f in enumerate(sorted(files), 1):
            Image.fromarray(np.full((12, 10, 3), 20 * k + i, np.uint8)).save(folder / f)
    return root


def test_numbering_by_folder_and_natural_order(tmp_path):
    root = _mixed_folder(tmp_path / "data")
    assert numbered_images("s1", [f"{i}.pgm" for i in range(10, 0, -1)]) == \
        {i: f"{i}.pgm" for i in range(1, 11)}                 # 2.pgm before 10.pgm
    assert numbered_images("Ann", ["Ann_0002.jpg", "Ann_0007.png"]) == \
        {2: "Ann_0002.jpg", 7: "Ann_0007.png"}               # LFW's own numbers
    find = PairFiles(str(root))
    assert find("s2", 10) == os.path.join("s2", "10.pgm") and find("s2", 11) is None
    assert find("alice", 2) == os.path.join("alice", "IMG 2.PNG")   # natural, case-blind
    assert find("alice", 3) == os.path.join("alice", "side-3.gif")
    assert find("nobody", 1) is None and find("..", 1) is None


def test_pairs_file_edge_cases_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="is a folder, not a pairs file"):
        read_lfw_pairs(str(tmp_path))
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("2\nJos\u00e9\t1\t2\nAna\t1\t3\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt:2: not UTF-8 text \(byte 0xe9\)"):
        read_lfw_pairs(str(latin))
    with pytest.raises(DataError, match="cannot read the pairs file"):
        read_lfw_pairs(str(tmp_path / "missing.txt"))


def _script(name, *args):
    """make_pairs.py never imports TensorFlow: a fresh interpreter (a fork would spare nothing);
    evaluate.py: a fork of tests/forkserver.py."""
    argv = [sys.executable, os.path.join(ROOT, "experiments", name)] + list(args)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if name == "make_pairs.py":
        return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    return forkserver.run(argv, timeout=600, env=env)


def test_make_pairs_and_evaluate_on_orl_and_png_folders(tmp_path, serve):
    root = _mixed_folder(tmp_path / "data")
    pairs = tmp_path / "pairs.txt"
    made = _script("make_pairs.py", f"--data_dir={root}", f"--out={pairs}", "--positives=30",
                   "--negatives=30", "--folds=5")
    assert made.returncode == 0, made.stderr[-2000:]
    assert "of 5 people (3 file names skipped: not an image" in made.stdout
    listed = read_lfw_pairs(str(pairs))
    assert sum(p[4] for p in listed) == 30 and sum(not p[4] for p in listed) == 30
    assert {p[0] for p in listed} <= {"s1", "s2", "s3", "alice", "bob"}

    url, log = serve()
    out = tmp_path / "eval"
    common = ["--matcher=http", f"--matcher_url={url}", "--matcher_embedding_dim=5",
              "--align_template=none", "--align_size=16", f"--data_dir={root}"]
    run = _script("evaluate.py", *common, f"--pairs={pairs}", f"--output_dir={out}")
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pairs_used"] == 60 and metrics["align_pairs_dropped"] == 0
    assert "only 60 pairs" in metrics["warning"]
    # every image a pair names was found (none missing) and sent once
    named = {(p[0], p[1]) for p in listed} | {(p[2], p[3]) for p in listed}
    assert metrics["align_pair_images_missing"] == 0 and metrics["images"] == len(named)
    assert 0.5 <= metrics["real_verification_accuracy"] <= 1.0
    sent = sum(log)

    # one-class pairs: refused before the matcher is asked anything
    positives = tmp_path / "positives.txt"
    positives.write_text("s1\t1\t2\nalice\t1\t3\n")
    one = _script("evaluate.py", *common, f"--pairs={positives}", f"--output_dir={out}-1")
    assert one.returncode == 2 and "all positive" in one.stderr and sum(log) == sent
    assert len([line for line in one.stderr.splitlines() if line.startswith("error:")]) == 1

    # every pair dropped (no such images): a clear error, no traceback, nothing sent
    gone = tmp_path / "gone.txt"
    gone.write_text("s1\t11\t12\nnobody\t1\ts2\t40\n")
    dropped = _script("evaluate.py", *common, f"--pairs={gone}", f"--output_dir={out}-2")
    assert dropped.returncode == 2 and "every one of the 2 pairs" in dropped.stderr
    assert "Traceback" not in dropped.stderr and sum(log) == sent


def test_make_pairs_says_what_it_skipped_when_too_few_people(tmp_path):
    root = tmp_path / "data"
    (root / "only").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "only" / "1.pgm")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "only" / "2.pgm")
    (root / "only" / "notes.doc").write_text("x")
    made = _script("make_pairs.py", f"--data_dir={root}", f"--out={tmp_path / 'p.txt'}")
    assert made.returncode == 2
    assert "two people or more, and 1 has images (1 file names skipped" in made.stderr


def test_training_pairs_file_finds_images_as_evaluate_does(tmp_path):
    """train.py --pairs on a non-LFW folder: its held-out pairs are found by the same numbering."""
    from types import SimpleNamespace
    from dibigan_tf.training.pairs import pairs_file_indices
    root = _mixed_folder(tmp_path / "data")
    held = SimpleNamespace(paths=["s2/1.pgm", "s2/10.pgm", "alice/IMG 2.PNG", "bob/a.png"])
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("s2\t1\t10\nalice\t2\tbob\t1\ns1\t1\t2\n")
    a, b, same = pairs_file_indices(str(pairs), held, str(root))
    assert a.tolist() == [0, 2] and b.tolist() == [1, 3] and same.tolist() == [True, False]
