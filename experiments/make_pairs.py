"""Write an LFW-format pairs file for `experiments/evaluate.py`, over a run's held-out people or
over every person of an identity folder.

    python experiments/make_pairs.py --heldout_of=checkpoints/<run> --out=heldout_pairs.txt \\
        [--positives=2000] [--negatives=20000] [--seed=0]
    python experiments/make_pairs.py --data_dir=<root>/<identity>/<image> --out=pairs.txt

LFW's own pairs files hold 300 + 300 pairs per fold: enough for accuracy, too few impostor pairs
for a TAR at FAR = 1e-3 or 1e-4 (which needs thousands). This writes as many as asked: positive
pairs are drawn from every person with two images or more (at most --max_positives_per_person
each, so that a few people with many photos do not fill the list), negative pairs from two
different people, both seeded. As in LFW's files, the pairs come in 10 folds, each holding its
share of positives then of negatives (the verification protocol's folds follow the file order).
An image is numbered as `experiments/evaluate.py` finds it again: LFW's `<name>/<name>_NNNN.<ext>`
when every file of the folder is named so, otherwise its 1-based position in the folder in
natural order (ORL's `s1/1.pgm ... s1/10.pgm` are 1..10), any format Pillow reads. Files that are
not images are skipped and counted. With --heldout_of, the numbers come from the identity folders
under the run's data root (its config.json, or --data_dir), so that images the run dropped
(no face) keep their places; only the held-out images the run kept are drawn.
"""
import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_string("heldout_of", "", "A face run directory: the people of its held-out split "
                    "(split.json) and the images it kept of them.")
flags.DEFINE_string("data_dir", "", "Or an identity-folder root: every person and image in it "
                    "(with --heldout_of: the run's data root, when its config.json has moved).")
flags.DEFINE_string("out", "", "The pairs file to write.")
flags.DEFINE_integer("positives", 2000, "Positive pairs (fewer if the people have fewer).")
flags.DEFINE_integer("negatives", 20000, "Negative pairs.")
flags.DEFINE_integer("max_positives_per_person", 10, "Cap on the positive pairs of one person.")
flags.DEFINE_integer("folds", 10, "Folds (blocks of positives then negatives).")
flags.DEFINE_integer("seed", 0, "Seed of the draw.")

def folder_people(root):
    """({name: sorted image numbers}, files skipped) of every identity folder under `root` (or
    its images/ folder): numbers as `numbered_images` gives them; non-image files are skipped."""
    from dibigan_tf.data.base import DataError
    from dibigan_tf.data.faces import folder_images, numbered_images
    if not os.path.isdir(root):
        raise DataError(f"--data_dir={root}: no such folder")
    base = os.path.join(root, "images") if os.path.isdir(os.path.join(root, "images")) else root
    people, skipped = {}, 0
    for name in sorted(os.listdir(base)):
        folder = os.path.join(base, name)
        if not os.path.isdir(folder):
            skipped += 1
            continue
        images = folder_images(folder)
        skipped += sum(1 for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))
                       ) - len(images)
        if images:
            people[name] = sorted(numbered_images(name, images))
    return people, skipped


def heldout_people(paths, root=""):
    """({name: sorted numbers}, files skipped) of a run's held-out image paths (relative to its
    data root). Numbers come from the whole identity folder under `root` when it can be listed
    (the evaluation numbers images the same way), else from the listed files themselves."""
    from dibigan_tf.data.faces import folder_images, image_extensions, numbered_images
    extensions = image_extensions()
    kept, skipped = {}, 0
    for path in paths:
        parts = str(path).replace("\\", "/").split("/")
        if len(parts) < 2 or not parts[-1].lower().endswith(extensions):
            skipped += 1
            continue
        kept.setdefault(parts[-2], set()).add(parts[-1])
    base = ""
    if root:
        base = os.path.join(root, "images") if os.path.isdir(os.path.join(root, "images")) \
            else root
    people = {}
    for name, files in sorted(kept.items()):
        on_disk = folder_images(os.path.join(base, name)) if base else []
        numbering = numbered_images(name, on_disk if set(files) <= set(on_disk) else files)
        numbers = sorted(n for n, f in numbering.items() if f in files)
        if numbers:
            people[name] = numbers
    return people, skipped


def draw_pairs(people, positives, negatives, max_per_person, seed):
    """(positive (name, i, j) list, negative (name1, i, name2, j) list), seeded."""
    rng = np.random.default_rng(seed)
    candidates = []
    for name, numbers in people.items():
        mine = [(name, a, b) for k, a in enumerate(numbers) for b in numbers[k + 1:]]
        if len(mine) > max_per_person:
            mine = [mine[i] for i in sorted(rng.choice(len(mine), max_per_person, replace=False))]
        candidates += mine
    order = rng.permutation(len(candidates))[:positives]
    pos = [candidates[i] for i in order]
    names = list(people)
    if len(names) < 2:
        raise ValueError(f"negative pairs need two people or more, and {len(names)} "
                         f"{'has' if len(names) == 1 else 'have'} images")
    neg, seen = [], set()
    limit = negatives * 20
    while len(neg) < negatives and limit:
        limit -= 1
        a, b = rng.choice(len(names), 2, replace=False)
        i = int(rng.choice(people[names[a]]))
        j = int(rng.choice(people[names[b]]))
        key = tuple(sorted([(names[a], i), (names[b], j)]))
        if key in seen:
            continue
        seen.add(key)
        neg.append((names[a], i, names[b], j))
    return pos, neg


def write_pairs(path, pos, neg, folds):
    """LFW layout: a header `folds per_fold`, then per fold its positives and its negatives."""
    folds = max(1, min(folds, len(pos), len(neg)))
    pos_folds = np.array_split(np.arange(len(pos)), folds)
    neg_folds = np.array_split(np.arange(len(neg)), folds)
    lines = [f"{folds}\t{max(len(pos), len(neg)) // folds}"]
    for p_idx, n_idx in zip(pos_folds, neg_folds):
        lines += [f"{pos[i][0]}\t{pos[i][1]}\t{pos[i][2]}" for i in p_idx]
        lines += [f"{neg[i][0]}\t{neg[i][1]}\t{neg[i][2]}\t{neg[i][3]}" for i in n_idx]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.out or not (FLAGS.heldout_of or FLAGS.data_dir):
        raise app.UsageError("give --out and --heldout_of or --data_dir")
    from dibigan_tf.data.base import DataError
    from dibigan_tf.data.faces import heldout_image_paths
    skipped = 0
    try:
        if FLAGS.heldout_of:
            root = FLAGS.data_dir or _run_data_dir(FLAGS.heldout_of)
            people, skipped = heldout_people(heldout_image_paths(FLAGS.heldout_of), root)
        else:
            people, skipped = folder_people(FLAGS.data_dir)
        pos, neg = draw_pairs(people, FLAGS.positives, FLAGS.negatives,
                              FLAGS.max_positives_per_person, FLAGS.seed)
    except (DataError, ValueError) as error:
        print(f"error: {error} ({skipped} file names skipped: not an image Pillow reads)",
              file=sys.stderr)
        return 2
    write_pairs(FLAGS.out, pos, neg, FLAGS.folds)
    print(f"{FLAGS.out}: {len(pos)} positive and {len(neg)} negative pairs of {len(people)} "
          f"people ({skipped} file names skipped: not an image Pillow reads)")
    return 0


def _run_data_dir(run_dir):
    """The data root a run was trained on (its config.json), or "" when unknown."""
    import json
    try:
        with open(os.path.join(run_dir, "config.json")) as handle:
            return json.load(handle).get("data_dir", "") or ""
    except (OSError, ValueError):
        return ""


if __name__ == "__main__":
    app.run(main)
