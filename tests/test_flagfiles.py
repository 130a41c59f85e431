"""Every flagfile parses and builds a run configuration (no typo in a flag, a value or a path),
and the Table 2 flagfiles are experiments/table2.py's rows and set each row's generator and
losses."""
import glob
import json
import os
import sys

from tests import forkserver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import glob, json, sys
sys.argv = ["train.py"]
sys.path.insert(0, "experiments")
import train
from absl import flags
out = {}
for path in sorted(glob.glob("experiments/flagfiles/*.flags")):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train.py", "--flagfile=" + path])
    cfg = train.build_config()
    out[path] = {"mode": cfg.mode, "dataset": cfg.dataset, "generator": cfg.gan.generator,
                 "distill": cfg.gan.use_distill, "biject": cfg.gan.use_biject,
                 "run": cfg.run_name, "size": cfg.image_size, "matcher": cfg.matcher.name,
                 "align": [cfg.align_template, cfg.align_size],
                 "full": json.loads(json.dumps(cfg.to_dict(), default=str))}
print("CONFIGS " + json.dumps(out))
"""

sys.path.insert(0, ROOT)
from experiments import table2  # noqa: E402

ROWS = {letter: (o["generator"], o["use_distill"], o["use_biject"])
        for letter, (_, _, o) in table2.ROWS.items()}


def test_table2_flagfiles_are_the_table():
    """The 36 row flagfiles are written from experiments/table2.py and never edited by hand."""
    for path, text in table2.all_flagfiles().items():
        with open(os.path.join(ROOT, path)) as handle:
            assert handle.read() == text, f"{path} differs from experiments/table2.py: run " \
                                          f"python experiments/table2.py"
    on_disk = glob.glob(os.path.join(ROOT, "experiments", "flagfiles", "*_[A-F]_*.flags"))
    assert sorted(os.path.relpath(p, ROOT) for p in on_disk) == sorted(table2.all_flagfiles())


def test_every_flagfile_builds_a_config():
    proc = forkserver.run([sys.executable, "-c", SCRIPT], cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("CONFIGS ")][-1]
    configs = json.loads(line[len("CONFIGS "):])
    assert len(configs) == len(glob.glob(os.path.join(ROOT, "experiments", "flagfiles",
                                                      "*.flags")))
    runs = [c["run"] for c in configs.values()]
    assert len(runs) == len(set(runs)), "two flagfiles share a run name"
    for path, c in configs.items():
        name = os.path.basename(path)
        for letter, (generator, distill, biject) in ROWS.items():
            if name.startswith((f"digits_{letter}_", f"faces_{letter}_")):
                assert (c["generator"], c["distill"], c["biject"]) == \
                    (generator, distill, biject), name
                assert c["mode"] == ("whitebox" if "whitebox" in name else "blackbox"), name
                assert c["size"] == (128 if name.endswith("_128.flags") else
                                     64 if name.startswith("faces") else 0), name
        if name.startswith("faces") and "whitebox" in name:
            # dlib's descriptor as a Keras model: whitebox on dlib's own 150x150 chips
            assert (c["matcher"], c["align"]) == ("dlib_keras", ["dlib", 150]), name
    # the LFW whitebox run is the blackbox one's twin: the same data, alignment, held-out
    # people, F, sizes and budget; only the mode and the run's name differ
    for size in ("", "_32", "_128"):
        whitebox, blackbox = (configs[f"experiments/flagfiles/lfw_{m}_dlib{size}.flags"]["full"]
                              for m in ("whitebox", "blackbox"))
        differ = {k for k in set(whitebox) | set(blackbox) if whitebox.get(k) != blackbox.get(k)}
        assert differ == {"mode", "run_name"}, (size, differ)
        assert blackbox["matcher"]["name"] == "dlib_keras" and blackbox["mode"] == "blackbox"
        assert blackbox["image_size"] == {"": 64, "_32": 32, "_128": 128}[size]
    # the longer recipe: the paper's five blocks and its batch rule (128 at 4x4, halved per
    # doubling), not the 32x32 recipe's batch sizes it inherits and clears
    long = configs["experiments/flagfiles/lfw_blackbox_dlib_128.flags"]["full"]["gan"]
    assert long["num_blocks"] == 5 and long["batch_sizes"] is None, long
    assert (long["base_batch_size"], long["base_batch_resolution"]) == (128, 4)
