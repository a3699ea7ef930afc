"""A CPU-time sampling profiler inside a benchmark worker (app.py imports it when
BENCH_CPUPROF_DIR is set).

Why not only py-spy: py-spy samples a thread whenever it is *runnable*, and on a box shared by
other jobs a worker spends most of that time waiting in the run queue (84 % measured with
/proc/PID/schedstat at load 8 on 2 cores). That waiting lands on the lines that woke another
process (a socket send), so py-spy's shares follow the machine's load. ``ITIMER_PROF`` ticks only
while this process runs (user or kernel time), so each sample is a slice of CPU actually spent
here, whatever else the machine does.

SIGUSR2 toggles it: the first starts sampling every ``BENCH_CPUPROF_INTERVAL`` s of CPU (default
0.001), the second stops it and writes ``BENCH_CPUPROF_DIR/<pid>.txt`` in py-spy's raw format
(``frame;frame;...;leaf count``, outermost first, ``function (path:line)`` with the path
relative to sys.path), so profile_split.py reads both.

Limits: the handler runs in the main thread at the next bytecode boundary, so a slice spent in
C (a syscall, libpq, libev's loop) is charged to the Python line that called it, or for the
hub's C loop to the first Python code it calls; a background OS thread's CPU is charged to the
main thread's current line.
"""

import os
import signal
import sys
from collections import Counter

_counts: Counter = Counter()
_labels: dict = {}
_running = False
_interval = float(os.environ.get("BENCH_CPUPROF_INTERVAL", "0.001"))
_roots = sorted({p for p in sys.path if p}, key=len, reverse=True)


def _label(code):
    lab = _labels.get(code)
    if lab is None:
        fn = code.co_filename
        for root in _roots:
            if fn.startswith(root + os.sep):
                fn = fn[len(root) + 1:]
                break
        lab = _labels[code] = (getattr(code, "co_qualname", code.co_name), fn)
    return lab


def _sample(signum, frame):
    parts = []
    while frame is not None:
        name, fn = _label(frame.f_code)
        parts.append(f"{name} ({fn}:{frame.f_lineno})")
        frame = frame.f_back
    parts.reverse()
    _counts[";".join(parts)] += 1


def _toggle(signum, frame):
    global _running
    if not _running:
        _counts.clear()
        _running = True
        signal.setitimer(signal.ITIMER_PROF, _interval, _interval)
        return
    signal.setitimer(signal.ITIMER_PROF, 0, 0)
    _running = False
    path = os.path.join(os.environ["BENCH_CPUPROF_DIR"], f"{os.getpid()}.txt")
    with open(path + ".tmp", "w") as f:
        for stack, n in _counts.items():
            f.write(f"{stack} {n}\n")
    os.replace(path + ".tmp", path)  # run.py waits for the file: only a complete one appears


def install():
    """In the worker process (after gunicorn's own signal set-up, which resets SIGUSR2)."""
    signal.signal(signal.SIGPROF, _sample)
    signal.siginterrupt(signal.SIGPROF, False)  # SA_RESTART: libpq / libev never see EINTR
    signal.signal(signal.SIGUSR2, _toggle)
    signal.siginterrupt(signal.SIGUSR2, False)
