#!/usr/bin/env bash
# Run Django's OWN test suite against ENGINE "django_fastpool" (or, for comparison, Django's stock
# PostgreSQL backend on psycopg2).
#
#   tests/django_suite/run.sh [--stock] [--full] [--parallel N] [runtests.py options...] [LABEL...]
#                             [-- anything passed to runtests.py verbatim]
#   tests/django_suite/run.sh [--stock] --full --shards K [runtests.py options...]
#
# runtests.py options that take a value must be attached (-kpattern, --exclude-tag=slow) or go
# after "--". --settings MODULE runs any other settings module on PYTHONPATH.
#
# Environment: DJANGO_SUITE_CACHE (cache dir), DJANGO_SUITE_PARALLEL (default 2), PYTHON,
# FASTPOOL_TEST_DSN, FASTPOOL_DJANGO_NAME, FASTPOOL_DJANGO_POOL_MAX (pool max_size, default 4),
# (the 5 tests that cannot apply to a pooled backend are skipped by django_fastpool itself,
# with the reason: DatabaseFeatures.django_test_skips).
#
# * Takes the Django version installed in the current Python (`python`, or $PYTHON), downloads
#   that version's sdist with pip once into a cache dir ($DJANGO_SUITE_CACHE, default
#   ${XDG_CACHE_HOME:-$HOME/.cache}/fastpool/django-suite) and extracts it there.
# * Installs nothing into the environment: the one extra it may need, tblib (tracebacks from
#   worker processes when --parallel > 1), goes into the cache dir and onto PYTHONPATH.
# * Runs the sdist's tests/runtests.py with --settings=settings_fastpool (settings_stock with
#   --stock), --noinput, -v1 and --parallel 2 unless told otherwise; PYTHONPATH is this
#   directory (settings), then the caller's PYTHONPATH, then the repo root (django_fastpool).
# * LABELs default to the ones that touch the backend: backends transactions basic queries
#   select_for_update model_fields delete update get_or_create (queries and transactions through
#   pooled connections), test_utils test_runner (test databases, cloning, connection patching),
#   handlers servers db_utils (request boundaries, live-server threads, the connection handler).
#   --full runs Django's whole suite instead (no labels).
# * --full --shards K: the whole suite as K SERIAL runtests.py processes on disjoint sets of its
#   top-level labels (exactly the ones runtests.py runs with none given), each with its own test
#   databases (<NAME>_s0, _s1, ...), every test's outcome recorded and merged into
#   $FASTPOOL_DJANGO_OUTCOMES (shards.py; chunk logs in $DJANGO_SUITE_LOGDIR, default a temp dir).
#   Serial, so exact test by test on Python >= 3.12 (compare.sh), yet on K cores.
#
# Needs fastpool installed in that Python (pip install -e '.[django]') and a PostgreSQL server:
# FASTPOOL_TEST_DSN (libpq DSN or URL; its dbname is ignored) or host=127.0.0.1 port=5432
# user=postgres. The role must be able to CREATE DATABASE. Test databases are test_django_fp*
# (fastpool) or test_django_stock* (stock); FASTPOOL_DJANGO_NAME overrides the base name.
# The exit status is runtests.py's.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

PYTHON="${PYTHON:-python}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

settings=settings_fastpool
parallel="${DJANGO_SUITE_PARALLEL:-2}"
passthrough=()
labels=()
full=0
shards=0
while [ $# -gt 0 ]; do
    case "$1" in
        --stock) settings=settings_stock ;;
        --fastpool) settings=settings_fastpool ;;
        --full) full=1 ;;
        --settings) settings="$2"; shift ;;
        --settings=*) settings="${1#--settings=}" ;;
        --parallel) parallel="$2"; shift ;;
        --parallel=*) parallel="${1#--parallel=}" ;;
        --shards) shards="$2"; shift ;;
        --shards=*) shards="${1#--shards=}" ;;
        --) shift; passthrough+=("$@"); break ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) passthrough+=("$1") ;;
        *) labels+=("$1") ;;
    esac
    shift
done
if [ "$full" = 1 ] && [ ${#labels[@]} -gt 0 ]; then
    echo "django_suite: --full runs every test; give either --full or labels" >&2
    exit 2
fi
if [ "$shards" != 0 ] && [ "$full" = 0 ]; then
    echo "django_suite: --shards splits the full suite; give --full with it" >&2
    exit 2
fi
if [ ${#labels[@]} -eq 0 ] && [ "$full" = 0 ]; then
    labels=(backends transactions basic queries select_for_update model_fields delete update get_or_create
            test_utils test_runner handlers servers db_utils)
fi

ver="$("$PYTHON" -c 'import django; print(django.__version__)')" || {
    echo "django_suite: Django is not installed in $PYTHON (pip install -e '.[django]')" >&2
    exit 2
}
"$PYTHON" -c 'import fastpool, psycopg2' 2>/dev/null || {
    echo "django_suite: fastpool/psycopg2 not importable from $PYTHON (pip install -e '.[django]')" >&2
    exit 2
}

cache="${DJANGO_SUITE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fastpool/django-suite}"
mkdir -p "$cache"

# 1. The sdist of exactly the installed version (its tests match its code).
sdist="$(ls "$cache"/[dD]jango-"$ver".tar.gz 2>/dev/null | head -n1 || true)"
if [ -z "$sdist" ]; then
    echo "django_suite: downloading the Django $ver sdist into $cache"
    "$PYTHON" -m pip download --quiet --no-binary :all: --no-deps "django==$ver" -d "$cache"
    sdist="$(ls "$cache"/[dD]jango-"$ver".tar.gz | head -n1)"
fi

# 2. Extracted once; a marker file tells a complete extraction from an interrupted one.
src="$cache/django-$ver"
if [ ! -f "$src/.extracted" ]; then
    echo "django_suite: extracting $(basename "$sdist")"
    tmp="$(mktemp -d "$cache/extract.XXXXXX")"
    tar -xzf "$sdist" -C "$tmp"
    top="$(find "$tmp" -mindepth 1 -maxdepth 1 -type d | head -n1)"
    [ -f "$top/tests/runtests.py" ] || { echo "django_suite: no tests/runtests.py in $sdist" >&2; exit 2; }
    rm -rf "$src"
    mv "$top" "$src"
    rm -rf "$tmp"
    touch "$src/.extracted"
fi

# 3. Test requirements: the chosen labels need none of tests/requirements/*.txt beyond Django's own
#    dependencies (Pillow, numpy, ... only turn skips into runs). tblib is needed only to carry
#    tracebacks out of worker processes; it goes into the cache, not into the environment.
# Settings first, then the caller's PYTHONPATH (so it can override anything), then the repo root.
pypath="$here${PYTHONPATH:+:$PYTHONPATH}:$repo"
if [ "$parallel" != 1 ] && [ "$shards" = 0 ]; then
    pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    deps="$cache/pydeps-py$pyver"
    if ! PYTHONPATH="$deps" "$PYTHON" -c 'import tblib' 2>/dev/null; then
        echo "django_suite: installing tblib into $deps"
        "$PYTHON" -m pip install --quiet --target "$deps" "tblib>=1.5.0"
    fi
    pypath="$pypath:$deps"
fi

# 4. The server must answer before Django's runner starts creating databases.
PYTHONPATH="$here" "$PYTHON" - <<'EOF'
import os, sys
import psycopg2
from fastpool_suite_db import DEFAULT_DSN
dsn = os.environ.get("FASTPOOL_TEST_DSN") or DEFAULT_DSN
try:
    psycopg2.connect(dsn, dbname="postgres", connect_timeout=5).close()
except psycopg2.Error as e:
    print("django_suite: cannot connect to PostgreSQL (set FASTPOOL_TEST_DSN): %s" % str(e).strip(),
          file=sys.stderr)
    sys.exit(2)
EOF

if [ "$shards" != 0 ]; then
    # Each shard runs this script on its chunk of labels, serially (--parallel 1).
    name="${FASTPOOL_DJANGO_NAME:-$([ "$settings" = settings_stock ] && echo django_stock || echo django_fp)}"
    logdir="${DJANGO_SUITE_LOGDIR:-$(mktemp -d "${TMPDIR:-/tmp}/django-shards.XXXXXX")}"
    echo "django_suite: Django $ver, $settings, full suite in $shards serial shards"
    start=$SECONDS
    rc=0
    PYTHONPATH="$here" "$PYTHON" "$here/shards.py" --tests-dir "$src/tests" --shards "$shards" \
        --logdir "$logdir" --name "$name" -- \
        bash "${BASH_SOURCE[0]}" --settings="$settings" --parallel 1 \
        ${passthrough[@]+"${passthrough[@]}"} || rc=$?
    echo "django_suite: $settings finished in $((SECONDS - start))s with exit code $rc"
    exit "$rc"
fi

echo "django_suite: Django $ver, $settings, --parallel $parallel, labels: ${labels[*]:-(full suite)}"
cd "$src/tests"
start=$SECONDS
rc=0
PYTHONPATH="$pypath" "$PYTHON" runtests.py \
    --settings="$settings" --parallel="$parallel" --noinput -v1 \
    ${passthrough[@]+"${passthrough[@]}"} ${labels[@]+"${labels[@]}"} </dev/null || rc=$?
echo "django_suite: $settings finished in $((SECONDS - start))s with exit code $rc"
exit "$rc"
