"""The ``fastpool`` command (also ``python -m fastpool``).

::

    fastpool doctor --dsn "host=db dbname=app user=app" --processes 24 [--reserve N] [--json]
    fastpool bench ...        # benchmarks: benchmarks/fastpool_bench/ of a source checkout
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

#: The benchmarks are not in the wheel (a production install needs none of their 2,500 lines):
#: they live in the source checkout, as ``benchmarks/fastpool_bench``.
BENCH_PACKAGE = "fastpool_bench"
NO_BENCHMARKS = """\
fastpool bench: the benchmarks are not part of the installed package; they live in fastpool's
source checkout (benchmarks/fastpool_bench). Run the command from the checkout, e.g.:

    cd fastpool && pip install -e '.[dev]' && python -m fastpool bench

(looked in: {looked})
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastpool",
        description="fastpool: a fast, bounded PostgreSQL connection pool for psycopg2.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"fastpool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    doctor = sub.add_parser(
        "doctor",
        help="recommend max_size per process from the server's limits; warn about idle connections",
        description=(
            "Read max_connections, the reserved connections and the current client connections of "
            "a PostgreSQL server; recommend max_size = (max_connections - reserve) / processes and "
            "warn about connections near the limit, idle connections that are never reused, and "
            "sessions idle in transaction. The password is never printed."
        ),
    )
    doctor.add_argument("--dsn", required=True, help="libpq connection string or URL of the server")
    doctor.add_argument(
        "--processes", required=True, type=_positive_int, metavar="N",
        help="number of processes that each have a pool: all workers on all hosts (gunicorn, celery...)",
    )
    doctor.add_argument(
        "--reserve", type=_non_negative_int, metavar="N", default=None,
        help=("connections to keep out of the pools (default: superuser_reserved_connections + "
              "reserved_connections + 10%% of max_connections, at least 3)"),
    )
    doctor.add_argument("--json", action="store_true", help="print the result as JSON")
    doctor.set_defaults(func=_doctor)

    bench = sub.add_parser(
        "bench", help="run the benchmarks (benchmarks/fastpool_bench of a source checkout)", add_help=False,
        description="Run fastpool's benchmarks; every argument is passed to fastpool_bench.cli.main().",
    )
    bench.add_argument("args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
    return parser


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import DoctorError, diagnose, format_report

    try:
        result = diagnose(args.dsn, args.processes, args.reserve)
    except DoctorError as exc:
        print(f"fastpool doctor: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        sys.stdout.write(format_report(result))
    return 0


def benchmarks_dirs() -> List[Path]:
    """Where ``fastpool bench`` looks for ``benchmarks/``: the checkout this fastpool was
    installed from in development mode (``pip install -e``), then the current directory."""
    here = Path(__file__).resolve().parent  # <checkout>/src/fastpool when editable
    candidates = [here.parent.parent / "benchmarks", Path(os.getcwd()) / "benchmarks"]
    return list(dict.fromkeys(candidates))


def _bench(args: argparse.Namespace) -> int:
    looked = benchmarks_dirs()
    found = next((d for d in looked if (d / BENCH_PACKAGE / "cli.py").is_file()), None)
    if found is None:
        print(NO_BENCHMARKS.format(looked=", ".join(map(str, looked))), end="", file=sys.stderr)
        return 2
    if str(found) not in sys.path:
        sys.path.insert(0, str(found))
    from fastpool_bench import cli as bench_cli  # type: ignore[import-not-found]

    rc = bench_cli.main(list(args.args))
    return int(rc or 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``fastpool`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    argv_list: List[str] = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv_list[:1] == ["bench"]:
        # Everything after "bench" belongs to the benchmark runner, options included (argparse's
        # REMAINDER would reject a leading "--option").
        return _bench(argparse.Namespace(args=argv_list[1:]))
    args = parser.parse_args(argv_list)
    return int(args.func(args) or 0)
