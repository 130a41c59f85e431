"""MultiWorkerMirroredStrategy over two worker processes on 127.0.0.1 (TF_CONFIG), each with its
CPU split into two logical devices (the cluster strategy places one replica per worker on a CPU
host, so the cluster has two replicas): one step of F^S and a fade-in G+D step (with L_biject
through H, the cross-replica all_gather of Eq. 5 and the EMA update) give the weights of the
single-device step, within 1e-5. The step is the one of the
four-device test (tests/training/test_mirrored.py), run with the cluster strategy in place of
MirroredStrategy."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.support import ROOT

_HEADER = '''
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from dibigan_tf.training.common import make_strategy as _make_strategy
_CLUSTER = _make_strategy("multi_worker")     # first: before any TensorFlow operation


def make_strategy(name):
    """The four-device script's strategies: "mirrored" is the two-worker cluster here."""
    return _CLUSTER if name == "mirrored" else _make_strategy(name)
'''


def _worker_script():
    # H's own SGD step is left out: under the cluster strategy its optimizer finds no
    # destination for a gradient of H's lazily built variables (the four-device test covers H);
    # H still runs inside the G step (L_biject) with its weights fixed
    return _HEADER + textwrap.dedent('''
        from tests.training.mirrored_cases import four_device_case
        results = four_device_case(sys.argv[1], make_strategy, with_flow_step=False)
        print("RESULTS " + json.dumps(results))
        ''')


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


@pytest.mark.slow   # 3-4 min on two cores; the four-device test covers the same step in one process
def test_one_step_on_two_workers_equals_the_single_device_step(tmp_path):
    ports = free_ports(2)
    script = _worker_script()
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=tf_config(ports, index), PYTHONUNBUFFERED="1")
        out = tmp_path / f"worker{index}"
        out.mkdir()
        procs.append(subprocess.Popen([sys.executable, "-c", script, str(out)], cwd=ROOT,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=600)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    results = []
    for proc, text in zip(procs, outputs):
        assert proc.returncode == 0, text[-4000:]
        line = [l for l in text.splitlines() if l.startswith("RESULTS ")][-1]
        print(line)   # the measured differences (pytest -s)
        results.append(json.loads(line[len("RESULTS "):]))
    for r in results:
        assert r["replicas"] == 2 and r["steps"] == 1 and r["count"] > 20
        assert r["max_diff"] < 1e-5, r           # F^S (incl. BN statistics), H and its priors
        assert r["gan_count"] > 30 and r["gan_diff"] < 1e-5, r   # G, D, G's EMA
        default_losses, cluster_losses = r["gan_losses"]
        for key, value in default_losses.items():
            assert abs(value - cluster_losses[key]) < 1e-4 * max(1.0, abs(value)), (key, r)


def _train(tmp_path, index, ports, log):
    from tests.support import TINY_KILLABLE, train_command
    cmd = train_command([f"--checkpoint_dir={tmp_path / f'worker{index}'}", "--run_name=tiny",
                         "--strategy=multi_worker"] + TINY_KILLABLE)
    env = dict(os.environ, TF_CONFIG=tf_config(ports, index), PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow   # two whole tiny runs on two workers; the one-process resume is in the fast set
def test_killing_one_worker_and_restarting_both_resumes_from_the_last_checkpoint(tmp_path):
    """Each worker keeps its run under its own --checkpoint_dir (as on separate machines).
    Worker 1 is killed in the GAN stage; worker 0, left waiting for it, is stopped; both are
    started again with the same command and finish from the last checkpoint they agree on."""
    import re
    import signal
    import time
    from tests.support import latest_step as _latest_step
    ports = free_ports(2)
    logs = [open(tmp_path / f"first{i}.log", "w") for i in range(2)]
    procs = [_train(tmp_path, i, ports, logs[i]) for i in range(2)]
    ckpt = tmp_path / "worker0" / "tiny" / "gan" / "ckpt"
    deadline, killed_at = time.time() + 1200, -1
    try:
        while time.time() < deadline and all(p.poll() is None for p in procs):
            if _latest_step(str(ckpt)) >= 10:
                procs[1].send_signal(signal.SIGKILL)
                killed_at = _latest_step(str(ckpt))
                break
            time.sleep(0.1)
        time.sleep(2.0)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        for log in logs:
            log.close()
    assert killed_at >= 10, (tmp_path / "first0.log").read_text()[-3000:]
    for i in range(2):
        assert not (tmp_path / f"worker{i}" / "tiny" / "gan" / "done.json").exists()

    ports = free_ports(2)
    logs = [open(tmp_path / f"second{i}.log", "w") for i in range(2)]
    procs = [_train(tmp_path, i, ports, logs[i]) for i in range(2)]
    try:
        for proc in procs:
            proc.wait(timeout=1200)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for log in logs:
            log.close()
    resumed = []
    for i, proc in enumerate(procs):
        output = (tmp_path / f"second{i}.log").read_text()
        assert proc.returncode == 0, output[-3000:]
        match = re.search(r"gan: resuming at step (\d+)", output)
        assert match, output[-3000:]
        resumed.append(int(match.group(1)))
        with open(tmp_path / f"worker{i}" / "tiny" / "gan" / "done.json") as handle:
            done = json.load(handle)
        assert done["step"] == 64 // 16 + 64 // 16 + 1024 // 16   # as an uninterrupted run
        assert done["images_seen"] == 64 + 64 + 1024
    assert resumed[0] == resumed[1] >= killed_at - 1
