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
Images are named `<name>/<name>_NNNN.jpg`, LFW's naming; other names are skipped and counted.
"""
import os
import re
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_string("heldout_of", "", "A face run directory: the people of its held-out split "
                    "(split.json) and the images it kept of them.")
flags.DEFINE_string("data_dir", "", "Or an identity-folder root: every person and image in it.")
flags.DEFINE_string("out", "", "The pairs file to write.")
flags.DEFINE_integer("positives", 2000, "Positive pairs (fewer if the people have fewer).")
flags.DEFINE_integer("negatives", 20000, "Negative pairs.")
flags.DEFINE_integer("max_positives_per_person", 10, "Cap on the positive pairs of one person.")
flags.DEFINE_integer("folds", 10, "Folds (blocks of positives then negatives).")
flags.DEFINE_integer("seed", 0, "Seed of the draw.")

_LFW_NAME = re.compile(r"^(?P<name>.+)_(?P<number>\d{4})\.(jpg|jpeg|png)$", re.IGNORECASE)


def people_images(paths):
    """{name: sorted image numbers} from `.../<name>/<name>_NNNN.jpg` paths; (dict, skipped)."""
    people, skipped = {}, 0
    for path in paths:
        parts = str(path).replace("\\", "/").split("/")
        match = _LFW_NAME.match(parts[-1]) if len(parts) >= 2 else None
        if match is None or match.group("name") != parts[-2]:
            skipped += 1
            continue
        people.setdefault(parts[-2], set()).add(int(match.group("number")))
    return {name: sorted(numbers) for name, numbers in sorted(people.items())}, skipped


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
        raise ValueError("negative pairs need two people or more")
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
    if not FLAGS.out or bool(FLAGS.heldout_of) == bool(FLAGS.data_dir):
        raise app.UsageError("give --out and one of --heldout_of or --data_dir")
    from dibigan_tf.data.digits import DataError
    from dibigan_tf.data.faces import heldout_image_paths
    try:
        if FLAGS.heldout_of:
            paths = heldout_image_paths(FLAGS.heldout_of)
        else:
            paths = [os.path.join(d, f) for d, _, files in os.walk(FLAGS.data_dir)
                     for f in files]
        people, skipped = people_images(paths)
        pos, neg = draw_pairs(people, FLAGS.positives, FLAGS.negatives,
                              FLAGS.max_positives_per_person, FLAGS.seed)
    except (DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_pairs(FLAGS.out, pos, neg, FLAGS.folds)
    print(f"{FLAGS.out}: {len(pos)} positive and {len(neg)} negative pairs of {len(people)} "
          f"people ({skipped} file names not in LFW's <name>/<name>_NNNN.jpg form skipped)")
    return 0


if __name__ == "__main__":
    app.run(main)
