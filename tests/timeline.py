"""A pytest plugin that writes when each test starts and ends, per test process, to see how the
pytest-xdist workers share the suite (docs/testing.md):

    make test PYTEST_ARGS="-p tests.timeline" TIMELINE=/tmp/timeline.txt
    python -m tests.timeline /tmp/timeline.txt

Each line: wall time, worker (gw0, gw1...), start or end, the test's id. Run as a module, it
prints each worker's first start and last end (seconds from the first start) and its tests
that took over 5 s."""
import collections
import os
import sys
import time


def _write(event, nodeid):
    path = os.environ.get("TIMELINE")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if path and worker:   # the xdist controller also reports each test: skip its lines
        with open(path, "a") as handle:
            handle.write(f"{time.time():.2f}\t{worker}\t{event}\t{nodeid}\n")


def pytest_runtest_logstart(nodeid, location):
    _write("start", nodeid)


def pytest_runtest_logfinish(nodeid, location):
    _write("end", nodeid)


def summary(path):
    with open(path) as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle if line.strip()]
    t0 = min(float(r[0]) for r in rows)
    by_worker = collections.defaultdict(list)
    for t, worker, event, nodeid in rows:
        by_worker[worker].append((float(t) - t0, event, nodeid))
    lines = []
    for worker, events in sorted(by_worker.items()):
        ends = [t for t, event, _ in events if event == "end"]
        lines.append(f"{worker}: first start {min(t for t, _, _ in events):.1f} s, last end "
                     f"{max(ends):.1f} s, {len(ends)} tests")
        started = {}
        for t, event, nodeid in events:
            if event == "start":
                started[nodeid] = t
            elif t - started.get(nodeid, t) > 5:
                lines.append(f"  {started[nodeid]:7.1f} {t - started[nodeid]:6.1f} s {nodeid}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(sys.argv[1]))
