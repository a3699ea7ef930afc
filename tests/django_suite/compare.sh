#!/usr/bin/env bash
# On demand: Django's test suite on the stock PostgreSQL backend (psycopg2) and on django_fastpool,
# same Django, same server, then a test-by-test comparison.
#
#   tests/django_suite/compare.sh [--parallel N] [LABEL...]      (no LABEL: Django's FULL suite)
#
# --parallel defaults to 1: on Python >= 3.12 Django's parallel runner files a skipped test's
# events under a neighbour's name (it indexes tests by testsRun, which no longer counts skips),
# so only a serial run gives every test its own outcome.
#
# Uses run.sh (same environment variables: FASTPOOL_TEST_DSN, PYTHON, DJANGO_SUITE_CACHE, ...);
# every test's outcome is recorded by fastpool_suite_runner.py (-v2 output cannot be matched test
# by test under the parallel runner). Logs and outcomes go to $COMPARE_DIR (default: a temp dir).
# The verdict is compare_outcomes.py's: exit 0 when the runs differ only by the skips
# django_fastpool declares (DatabaseFeatures.django_test_skips, README "Supported").
# The full suite takes long: well over an hour per backend, serially, on a 2-core machine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
out="${COMPARE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/django-compare.XXXXXX")}"
mkdir -p "$out"

args=()
labels=()
parallel=1
while [ $# -gt 0 ]; do
    case "$1" in
        --parallel) parallel="$2"; shift ;;
        --parallel=*) parallel="${1#--parallel=}" ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) args+=("$1") ;;
        *) labels+=("$1") ;;
    esac
    shift
done
[ ${#labels[@]} -eq 0 ] && args+=("--full")
args+=("--parallel" "$parallel")

rc_stock=0 rc_fast=0
echo "compare: logs in $out"
FASTPOOL_DJANGO_NAME="${FASTPOOL_DJANGO_NAME:-cmp}_stock" FASTPOOL_DJANGO_OUTCOMES="$out/stock.json" \
    bash "$here/run.sh" --stock ${args[@]+"${args[@]}"} ${labels[@]+"${labels[@]}"} >"$out/stock.log" 2>&1 || rc_stock=$?
tail -n 3 "$out/stock.log"
FASTPOOL_DJANGO_NAME="${FASTPOOL_DJANGO_NAME:-cmp}_fp" FASTPOOL_DJANGO_OUTCOMES="$out/fastpool.json" \
    bash "$here/run.sh" ${args[@]+"${args[@]}"} ${labels[@]+"${labels[@]}"} >"$out/fastpool.log" 2>&1 || rc_fast=$?
tail -n 3 "$out/fastpool.log"
echo "compare: exit codes: stock $rc_stock, django_fastpool $rc_fast"
rc=0
"$PYTHON" "$here/compare_outcomes.py" "$out/stock.json" "$out/fastpool.json" || rc=$?
[ "$rc_stock" = "$rc_fast" ] || rc=1
exit "$rc"
