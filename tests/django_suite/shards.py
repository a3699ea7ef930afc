"""Run Django's FULL suite as K serial processes on disjoint sets of its test labels (run.sh --shards K).

    python shards.py --tests-dir SDIST/tests --shards K --logdir DIR --name BASE -- COMMAND...

Why: on Python >= 3.12 Django's parallel runner files a skipped test's events under a neighbour's
name, so a test-by-test comparison needs serial runs (--parallel 1), and one serial run of the
full suite takes well over an hour on a 2-core machine. K serial processes on disjoint labels use
K cores and keep every outcome exact.

The labels are exactly the ones ``runtests.py`` runs when given none: its own
``get_test_modules()`` (every package directory of the sdist's ``tests/`` minus its
``SUBDIRS_TO_SKIP``; ``gis_tests`` only on a GIS backend, which neither settings module is). They
are cut, in runtests.py's order, into chunks of about equal size (by the number of ``def test``
in each label's files), more chunks than shards; each of K workers takes the next chunk and runs
``COMMAND LABEL...`` with ``FASTPOOL_DJANGO_NAME=BASE_s<worker>`` (own test databases) and
``FASTPOOL_DJANGO_OUTCOMES`` set (fastpool_suite_runner.py records every test's outcome). Taking
chunks as they come balances the shards on a loaded machine, and the chunks are the same for any
backend, so two runs are split alike.

With ``$DJANGO_SUITE_LABELS_FILE`` (one label a line) those labels are split instead of the full
suite's (compare.sh --stock-where-needed).

At the end (also when stopped by SIGTERM/SIGINT: finished chunks are kept) the chunk outcomes are
merged into ``$FASTPOOL_DJANGO_OUTCOMES`` (default DIR/outcomes.json) with ``labels`` (all of
them), ``labels_run`` and ``chunks_missing``, so an incomplete run says so. Exit status: 0 when
every chunk ran and passed, else 1 (or the first non-zero runtests.py status).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

_TEST_DEF = re.compile(rb"^\s*(?:async\s+)?def test", re.M)


def test_labels(tests_dir: str) -> List[str]:
    """The labels runtests.py runs with none given, asked of runtests.py itself."""
    code = ("import runtests, sys\n"
            "mods = runtests.get_test_modules(False) if runtests.get_test_modules.__code__.co_argcount"
            " else runtests.get_test_modules()\n"
            "sys.stdout.write('\\n'.join(m if isinstance(m, str) else '.'.join(filter(None, m))"
            " for m in mods))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tests_dir, check=True,
                         stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": tests_dir}).stdout
    labels = sorted(set(out.decode().split()))
    if not labels:
        raise SystemExit(f"shards: runtests.py in {tests_dir} lists no test labels")
    return labels


def weight(tests_dir: str, label: str) -> int:
    """About how many tests a label has: its ``def test`` lines (at least 1)."""
    n = 0
    for root, _dirs, files in os.walk(os.path.join(tests_dir, *label.split("."))):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(root, name), "rb") as f:
                    n += len(_TEST_DEF.findall(f.read()))
    return max(n, 1)


def chunks(tests_dir: str, labels: List[str], count: int) -> List[List[str]]:
    """``labels`` in order, cut into at most ``count`` runs of about equal weight."""
    weights = [weight(tests_dir, label) for label in labels]
    target = sum(weights) / count
    out: List[List[str]] = [[]]
    acc = 0.0
    for label, w in zip(labels, weights):
        if out[-1] and acc + w / 2 > target * len(out) and len(out) < count:
            out.append([])
        out[-1].append(label)
        acc += w
    return out


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tests-dir", required=True)
    parser.add_argument("--shards", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=0, help="default: 8 per shard")
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--name", required=True, help="base of the test database names")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.shards < 1 or not command:
        parser.error("--shards must be >= 1 and a command must follow --")
    os.makedirs(args.logdir, exist_ok=True)
    for name in os.listdir(args.logdir):  # a previous run's chunks must not count as this one's
        if re.fullmatch(r"chunk\d+\.(json|log)", name):
            os.remove(os.path.join(args.logdir, name))
    labels_file = os.environ.get("DJANGO_SUITE_LABELS_FILE")
    if labels_file:  # compare.sh --stock-where-needed: given test labels instead of the full suite
        with open(labels_file) as f:
            labels = [line.strip() for line in f if line.strip()]
    else:
        labels = test_labels(args.tests_dir)
    work = chunks(args.tests_dir, labels, args.chunks or 8 * args.shards)
    # Disjoint and complete by construction; checked anyway, it is the claim the merge rests on.
    flat = [label for chunk in work for label in chunk]
    assert flat == labels, "shards: the chunks do not partition the label list"
    print(f"shards: {len(labels)} labels in {len(work)} chunks on {args.shards} serial processes, "
          f"logs in {args.logdir}", flush=True)

    lock = threading.Lock()
    pending = list(enumerate(work))
    status: Dict[int, int] = {}
    procs: Dict[int, subprocess.Popen] = {}
    stopping = threading.Event()

    def worker(shard: int) -> None:
        while not stopping.is_set():
            with lock:
                if not pending:
                    return
                index, chunk = pending.pop(0)
            env = {**os.environ, "FASTPOOL_DJANGO_NAME": f"{args.name}_s{shard}",
                   "FASTPOOL_DJANGO_OUTCOMES": os.path.join(args.logdir, f"chunk{index:02d}.json")}
            start = time.monotonic()
            with open(os.path.join(args.logdir, f"chunk{index:02d}.log"), "w") as log:
                proc = subprocess.Popen(command + chunk, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
                with lock:
                    procs[shard] = proc
                rc = proc.wait()
            with lock:
                status[index] = rc
            print(f"shards: chunk {index + 1}/{len(work)} ({chunk[0]} .. {chunk[-1]}, {len(chunk)} labels) "
                  f"on shard {shard}: exit {rc} after {time.monotonic() - start:.0f}s", flush=True)

    def stop(signum: int, _frame: Any) -> None:
        stopping.set()
        with lock:
            pending.clear()
            for proc in procs.values():
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.shards)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(0.5)
    return merge(args.logdir, labels, work, status)


def merge(logdir: str, labels: List[str], work: List[List[str]], status: Dict[int, int]) -> int:
    outcomes: Dict[str, Any] = {}
    ran = found = 0
    missing: List[int] = []
    labels_run: List[str] = []
    for index, chunk in enumerate(work):
        path = os.path.join(logdir, f"chunk{index:02d}.json")
        data: Optional[Dict[str, Any]] = None
        if index in status and os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
        if data is None:
            missing.append(index)
            continue
        ran += int(data["ran"])
        with open(os.path.join(logdir, f"chunk{index:02d}.log"), errors="replace") as log:
            # runtests.py's "Found N test(s)." (its count before running; with no labels given it
            # prints the full suite's, so the chunks' sum can be checked against it).
            found += sum(int(m.group(1)) for m in re.finditer(r"^Found (\d+) test", log.read(), re.M))
        overlap = set(outcomes) & set(data["outcomes"])
        assert not overlap, f"shards: tests in two chunks: {sorted(overlap)[:5]}"
        outcomes.update(data["outcomes"])
        labels_run.extend(chunk)
    target = os.environ.get("FASTPOOL_DJANGO_OUTCOMES") or os.path.join(logdir, "outcomes.json")
    with open(target, "w") as f:
        json.dump({"ran": ran, "found": found, "outcomes": outcomes, "labels": labels,
                   "labels_run": labels_run, "chunks_missing": [work[i] for i in missing]},
                  f, indent=0, sort_keys=True)
    print(f"shards: {found} tests found, {ran} ran in {len(work) - len(missing)}/{len(work)} chunks "
          f"({len(labels_run)}/{len(labels)} labels); outcomes in {target}", flush=True)
    if missing:
        print(f"shards: INCOMPLETE, chunks not run or not finished: {[i + 1 for i in missing]}", flush=True)
        return 1
    return next((rc for rc in status.values() if rc), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
