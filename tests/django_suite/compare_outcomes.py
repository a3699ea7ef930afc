"""Compare two runs of Django's suite test by test: stock backend vs django_fastpool.

    python compare_outcomes.py STOCK.json FASTPOOL.json

The JSON files are written by fastpool_suite_runner.py (compare.sh sets it up). Prints every test
whose outcome differs. A difference is *declared* when django_fastpool skips a test with one of
its own reasons (``DatabaseFeatures.django_test_skips``: every reason starts with
"django_fastpool"); anything else is a real difference. Exit status: 0 when the only differences
are declared skips, 1 otherwise, 2 for a missing or unreadable file.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List, Tuple


def load(path: str) -> Tuple[int, Dict[str, List[str]]]:
    with open(path) as f:
        data: Dict[str, Any] = json.load(f)
    return int(data["ran"]), data["outcomes"]


def main(argv: List[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        stock_ran, stock = load(argv[1])
        fast_ran, fast = load(argv[2])
    except (OSError, ValueError, KeyError) as exc:
        print(f"compare: cannot read the outcomes ({exc}); did both runs finish?", file=sys.stderr)
        return 2
    declared, real = [], []
    for test in sorted(set(stock) | set(fast)):
        a, b = stock.get(test, ["missing", ""]), fast.get(test, ["missing", ""])
        if a[0] == b[0]:
            continue
        line = f"{test}: stock {a[0]}{f' ({a[1]})' if a[1] else ''} -> django_fastpool {b[0]}" \
               f"{f' ({b[1]})' if b[1] else ''}"
        (declared if b[0] == "skipped" and b[1].startswith("django_fastpool") else real).append(line)
    print(f"compare: stock ran {stock_ran} tests ({len(stock)} outcomes), "
          f"django_fastpool ran {fast_ran} ({len(fast)} outcomes)")
    for title, lines in (("declared skips", declared), ("REAL DIFFERENCES", real)):
        print(f"compare: {len(lines)} {title}")
        for line in lines:
            print("  " + line)
    # "ran" is informative only: Python >= 3.12 leaves skipped tests out of testsRun, so the
    # declared skips lower django_fastpool's figure; a test missing from one run is a real
    # difference above.
    return 0 if not real else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
