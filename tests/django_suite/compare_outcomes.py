"""Compare two ``runtests.py -v2`` logs test by test: stock backend vs django_fastpool.

    python compare_outcomes.py STOCK.log FASTPOOL.log

Prints every test whose outcome differs. A difference is *declared* when django_fastpool skips a
test with one of its own reasons (``DatabaseFeatures.django_test_skips``, every reason starting
with "django_fastpool"); anything else is a real difference. Exit status: 0 when the only
differences are declared skips, 1 otherwise (2 for unreadable logs).
"""

from __future__ import annotations

import re
import sys
from typing import Dict, Tuple

# "test_x (app.tests.Class.test_x) ... ok"; with a docstring the " ... ok" ends the next line.
_TEST = re.compile(r"^(\w+) \(([\w.]+)\)")
_STATUS = re.compile(r" \.\.\. (ok|skipped (?P<reason>.*)|FAIL|ERROR|expected failure|unexpected success)$")
_SUMMARY = re.compile(r"^Ran (\d+) tests?")


def outcomes(path: str) -> Tuple[Dict[str, Tuple[str, str]], int]:
    """{test id: (status, skip reason)} and the "Ran N tests" figure of one log."""
    found: Dict[str, Tuple[str, str]] = {}
    ran = -1
    pending = None
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            summary = _SUMMARY.match(line)
            if summary:
                ran = int(summary.group(1))
            test = _TEST.match(line)
            if test:
                pending = test.group(2)
            status = _STATUS.search(line)
            if status and pending is not None:
                kind = status.group(1).split(" ", 1)[0] if status.group(1).startswith("skipped") else status.group(1)
                found[pending] = (kind, (status.group("reason") or "").strip("'\""))
                pending = None
    return found, ran


def main(argv: list) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    stock, stock_ran = outcomes(argv[1])
    fast, fast_ran = outcomes(argv[2])
    if not stock or not fast:
        print("compare: no -v2 test lines in one of the logs", file=sys.stderr)
        return 2
    declared, real = [], []
    for test in sorted(set(stock) | set(fast)):
        a, b = stock.get(test, ("missing", "")), fast.get(test, ("missing", ""))
        if a[0] == b[0]:
            continue
        line = f"{test}: stock {a[0]}{' (' + a[1] + ')' if a[1] else ''} -> django_fastpool {b[0]}" \
               f"{' (' + b[1] + ')' if b[1] else ''}"
        (declared if b[0] == "skipped" and b[1].startswith("django_fastpool") else real).append(line)
    print(f"compare: stock ran {stock_ran} tests ({len(stock)} with an outcome line), "
          f"django_fastpool ran {fast_ran} ({len(fast)})")
    for title, lines in (("declared skips", declared), ("REAL DIFFERENCES", real)):
        print(f"compare: {len(lines)} {title}")
        for line in lines:
            print("  " + line)
    return 0 if not real and stock_ran == fast_ran else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
