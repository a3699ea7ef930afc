"""Compare two runs of Django's suite test by test: stock backend vs django_fastpool.

    python compare_outcomes.py STOCK.json FASTPOOL.json
    python compare_outcomes.py --stock-subset STOCK.json FASTPOOL.json
    python compare_outcomes.py --needed FASTPOOL.json

The JSON files are written by fastpool_suite_runner.py (compare.sh sets it up). Prints every test
whose outcome differs. A difference is *declared* when django_fastpool skips a test with one of
its own reasons (``DatabaseFeatures.django_test_skips``: every reason starts with
"django_fastpool"); anything else is a real difference. Exit status: 0 when the only differences
are declared skips, 1 otherwise (also when a sharded run did not finish every chunk: its JSON
lists them in ``chunks_missing``), 2 for a missing or unreadable file.

``--needed`` prints the labels the stock backend must run for a comparison of every test that
does not pass ("ok") on django_fastpool, one a line: the test's id, or for an error outside a
test (``setUpClass (module.Class)``, a module that failed to import) the class or module.
``--stock-subset``: STOCK.json ran only those labels (compare.sh --stock-where-needed); a test
that passes on django_fastpool and is absent from STOCK.json is counted as not compared, any
other test absent from one side is a real difference.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Dict, List, Tuple


def load(path: str) -> Tuple[int, Dict[str, List[str]], List[Any]]:
    with open(path) as f:
        data: Dict[str, Any] = json.load(f)
    return int(data["ran"]), data["outcomes"], data.get("chunks_missing", [])


def label_of(test_id: str) -> str:
    """What runtests.py must be given to run (or re-raise the error of) this outcome."""
    holder = re.fullmatch(r"\w+ \((.+)\)", test_id)  # setUpClass (x.y.Class), setUpModule (x.y)
    if holder:
        return holder.group(1)
    if test_id.startswith("unittest.loader._FailedTest."):  # a module that failed to import
        return test_id[len("unittest.loader._FailedTest."):]
    return test_id


def needed(path: str) -> int:
    _ran, fast, _missing = load(path)
    for label in sorted({label_of(t) for t, (status, _detail) in fast.items() if status != "ok"}):
        print(label)
    return 0


def main(argv: List[str]) -> int:
    if len(argv) == 3 and argv[1] == "--needed":
        return needed(argv[2])
    subset = len(argv) == 4 and argv[1] == "--stock-subset"
    if subset:
        argv = argv[:1] + argv[2:]
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        stock_ran, stock, stock_missing = load(argv[1])
        fast_ran, fast, fast_missing = load(argv[2])
    except (OSError, ValueError, KeyError) as exc:
        print(f"compare: cannot read the outcomes ({exc}); did both runs finish?", file=sys.stderr)
        return 2
    declared, real = [], []
    not_compared = 0
    for test in sorted(set(stock) | set(fast)):
        a, b = stock.get(test, ["missing", ""]), fast.get(test, ["missing", ""])
        if subset and a[0] == "missing" and b[0] == "ok":
            not_compared += 1
            continue
        if a[0] == b[0]:
            continue
        line = f"{test}: stock {a[0]}{f' ({a[1]})' if a[1] else ''} -> django_fastpool {b[0]}" \
               f"{f' ({b[1]})' if b[1] else ''}"
        (declared if b[0] == "skipped" and b[1].startswith("django_fastpool") else real).append(line)
    print(f"compare: stock ran {stock_ran} tests ({len(stock)} outcomes), "
          f"django_fastpool ran {fast_ran} ({len(fast)} outcomes)")
    counts = {who: summary(outcomes) for who, outcomes in (("stock", stock), ("django_fastpool", fast))}
    for who, line in counts.items():
        print(f"compare: {who}: {line}")
    if subset:
        print(f"compare: {not_compared} tests pass on django_fastpool and were not run on the stock "
              f"backend (--stock-subset); every other test is compared")
    for who, missing in (("stock", stock_missing), ("django_fastpool", fast_missing)):
        if missing:
            print(f"compare: INCOMPLETE: the {who} run did not finish the chunks {missing}")
    for title, lines in (("declared skips", declared), ("REAL DIFFERENCES", real)):
        print(f"compare: {len(lines)} {title}")
        for line in lines:
            print("  " + line)
    # "ran" is informative only: Python >= 3.12 leaves skipped tests out of testsRun, so the
    # declared skips lower django_fastpool's figure; a test missing from one run is a real
    # difference above.
    return 0 if not real and not stock_missing and not fast_missing else 1


def summary(outcomes: Dict[str, List[str]]) -> str:
    by_status: Dict[str, int] = {}
    for status, _detail in outcomes.values():
        by_status[status] = by_status.get(status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(by_status.items(), key=lambda kv: -kv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
