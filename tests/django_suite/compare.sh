#!/usr/bin/env bash
# On demand: Django's test suite on the stock PostgreSQL backend (psycopg2) and on django_fastpool,
# same Django, same server, then a test-by-test comparison.
#
#   tests/django_suite/compare.sh [--parallel N] [LABEL...]      (no LABEL: Django's FULL suite)
#   tests/django_suite/compare.sh --shards K [--stock-where-needed]   (the FULL suite, K cores)
#
# --parallel defaults to 1: on Python >= 3.12 Django's parallel runner files a skipped test's
# events under a neighbour's name (it indexes tests by testsRun, which no longer counts skips),
# so only a serial run gives every test its own outcome. One serial run of the full suite takes
# well over an hour per backend on a 2-core machine.
#
# --shards K (full suite only): each backend's run is K serial runtests.py processes on disjoint
# sets of Django's top-level test labels, every one of the labels runtests.py runs when given
# none (run.sh --shards, shards.py); outcomes merged. Exact test by test, on K cores.
#
# --stock-where-needed (with --shards): the cheaper comparison. django_fastpool runs the FULL
# suite; the stock backend then runs only the tests whose django_fastpool outcome is not "ok"
# (failures, errors, skips of any reason, expected failures, unexpected successes), by test id
# (a class or module-level error: its class/module). A test that passes on django_fastpool is not
# run on the stock backend: the comparison says how many, and claims nothing about them beyond
# "passes on django_fastpool". Every test that does not pass on django_fastpool is compared.
#
# Uses run.sh (same environment variables: FASTPOOL_TEST_DSN, PYTHON, DJANGO_SUITE_CACHE, ...);
# every test's outcome is recorded by fastpool_suite_runner.py (-v2 output cannot be matched test
# by test under the parallel runner). Logs and outcomes go to $COMPARE_DIR (default: a temp dir;
# shard chunk logs in its stock/ and fastpool/). The verdict is compare_outcomes.py's: exit 0 when
# the runs differ only by the skips django_fastpool declares (DatabaseFeatures.django_test_skips,
# README "Supported") and every chunk of a sharded run finished.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
out="${COMPARE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/django-compare.XXXXXX")}"
mkdir -p "$out"

args=()
labels=()
parallel=1
shards=0
subset=0
while [ $# -gt 0 ]; do
    case "$1" in
        --parallel) parallel="$2"; shift ;;
        --parallel=*) parallel="${1#--parallel=}" ;;
        --shards) shards="$2"; shift ;;
        --shards=*) shards="${1#--shards=}" ;;
        --stock-where-needed) subset=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) args+=("$1") ;;
        *) labels+=("$1") ;;
    esac
    shift
done
if [ "$shards" != 0 ] && [ ${#labels[@]} -gt 0 ]; then
    echo "compare: --shards splits the full suite; give no LABEL with it" >&2
    exit 2
fi
if [ "$subset" = 1 ] && [ "$shards" = 0 ]; then
    echo "compare: --stock-where-needed needs --shards K" >&2
    exit 2
fi
[ ${#labels[@]} -eq 0 ] && args+=("--full")
if [ "$shards" != 0 ]; then args+=("--shards" "$shards"); else args+=("--parallel" "$parallel"); fi

run() {  # run BACKEND_NAME FLAG... : one run.sh run, outcomes in $out/BACKEND_NAME.json
    local who="$1"; shift
    local rc=0
    FASTPOOL_DJANGO_NAME="${FASTPOOL_DJANGO_NAME:-cmp}_$who" FASTPOOL_DJANGO_OUTCOMES="$out/$who.json" \
        DJANGO_SUITE_LOGDIR="$out/$who" bash "$here/run.sh" "$@" >"$out/$who.log" 2>&1 || rc=$?
    tail -n 3 "$out/$who.log"
    return "$rc"
}

rc_stock=0 rc_fast=0
echo "compare: logs in $out"
if [ "$subset" = 1 ]; then
    run fastpool ${args[@]+"${args[@]}"} || rc_fast=$?
    "$PYTHON" "$here/compare_outcomes.py" --needed "$out/fastpool.json" >"$out/stock-labels.txt"
    echo "compare: the stock backend runs the $(wc -l <"$out/stock-labels.txt") labels of the tests that do not pass on django_fastpool"
    if [ -s "$out/stock-labels.txt" ]; then
        DJANGO_SUITE_LABELS_FILE="$out/stock-labels.txt" run stock --stock ${args[@]+"${args[@]}"} || rc_stock=$?
    else
        echo '{"ran": 0, "outcomes": {}}' >"$out/stock.json"
    fi
    rc=0
    "$PYTHON" "$here/compare_outcomes.py" --stock-subset "$out/stock.json" "$out/fastpool.json" || rc=$?
    exit "$rc"
fi
run stock --stock ${args[@]+"${args[@]}"} || rc_stock=$?
run fastpool ${args[@]+"${args[@]}"} || rc_fast=$?
echo "compare: exit codes: stock $rc_stock, django_fastpool $rc_fast"
rc=0
"$PYTHON" "$here/compare_outcomes.py" "$out/stock.json" "$out/fastpool.json" || rc=$?
[ "$rc_stock" = "$rc_fast" ] || rc=1
exit "$rc"
