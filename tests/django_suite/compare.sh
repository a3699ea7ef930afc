#!/usr/bin/env bash
# On demand: Django's test suite on the stock PostgreSQL backend (psycopg2) and on django_fastpool,
# same Django, same server, then a test-by-test comparison.
#
#   tests/django_suite/compare.sh [--parallel N] [LABEL...]      (no LABEL: Django's FULL suite)
#
# Uses run.sh (same environment variables: FASTPOOL_TEST_DSN, PYTHON, DJANGO_SUITE_CACHE, ...),
# with -v2 so every test's outcome is printed; logs go to $COMPARE_DIR (default a new temp dir).
# The verdict is compare_outcomes.py's: exit 0 when the runs differ only by the skips
# django_fastpool declares (DatabaseFeatures.django_test_skips, README "Supported").
# The full suite takes long (about an hour per backend on a loaded 2-core machine).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
out="${COMPARE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/django-compare.XXXXXX")}"
mkdir -p "$out"

args=()
labels=()
while [ $# -gt 0 ]; do
    case "$1" in
        --parallel) args+=("--parallel" "$2"); shift ;;
        --parallel=*) args+=("$1") ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) args+=("$1") ;;
        *) labels+=("$1") ;;
    esac
    shift
done
[ ${#labels[@]} -eq 0 ] && args+=("--full")

rc_stock=0 rc_fast=0
echo "compare: logs in $out"
FASTPOOL_DJANGO_NAME="${FASTPOOL_DJANGO_NAME:-cmp}_stock" \
    bash "$here/run.sh" --stock -v2 ${args[@]+"${args[@]}"} ${labels[@]+"${labels[@]}"} >"$out/stock.log" 2>&1 || rc_stock=$?
tail -n 3 "$out/stock.log"
FASTPOOL_DJANGO_NAME="${FASTPOOL_DJANGO_NAME:-cmp}_fp" \
    bash "$here/run.sh" -v2 ${args[@]+"${args[@]}"} ${labels[@]+"${labels[@]}"} >"$out/fastpool.log" 2>&1 || rc_fast=$?
tail -n 3 "$out/fastpool.log"
echo "compare: exit codes: stock $rc_stock, django_fastpool $rc_fast"
rc=0
"$PYTHON" "$here/compare_outcomes.py" "$out/stock.log" "$out/fastpool.log" || rc=$?
[ "$rc_stock" = "$rc_fast" ] || rc=1
exit "$rc"
