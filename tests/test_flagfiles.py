"""Every flagfile parses and builds a run configuration (no typo in a flag, a value or a path),
and the Table 2 flagfiles set the row's generator and losses."""
import glob
import json
import os
import subprocess
import sys

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
                 "align": [cfg.align_template, cfg.align_size]}
print("CONFIGS " + json.dumps(out))
"""

ROWS = {"A": ("pggan", False, False), "B": ("pggan", True, False), "C": ("pggan", True, True),
        "D": ("feature_conditional", False, False), "E": ("feature_conditional", True, False),
        "F": ("feature_conditional", True, True)}


def test_every_flagfile_builds_a_config():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
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
