"""The ``fastpool`` command (also ``python -m fastpool``).

::

    fastpool doctor --dsn "host=db dbname=app user=app" --processes 24 [--reserve N] [--json]
    fastpool bench ...        # benchmarks (fastpool.bench, when installed)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional, Sequence


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
        "bench", help="run the benchmarks (fastpool.bench)", add_help=False,
        description="Run fastpool's benchmarks; every argument is passed to fastpool.bench.cli.main().",
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


def _bench(args: argparse.Namespace) -> int:
    try:
        from .bench import cli as bench_cli
    except ModuleNotFoundError as exc:
        # Only "fastpool.bench is not there": a missing dependency *inside* it is a real error.
        if exc.name not in ("fastpool.bench", "fastpool.bench.cli"):
            raise
        bench_cli = None
    bench_main = getattr(bench_cli, "main", None)
    if bench_main is None:
        print("bench not available yet", file=sys.stderr)
        return 2
    rc = bench_main(list(args.args))
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
