"""A small asyncio HTTP/1.1 load client and a server-connection sampler, for real servers.

``load(host, port, paths, clients, seconds, timeout)``: ``clients`` keep-alive connections,
each sending ``GET`` requests over ``paths`` in turn for ``seconds``. A request that gets no
complete response within ``timeout`` is a *stall* (the client then reconnects); a response
other than 200, or a dropped connection, is an *error* -- except that, as HTTP clients do
(RFC 9112 §9.3.1: idempotent requests), a GET whose *reused* keep-alive connection the server
closed before answering is retried once on a new connection (counted in ``retried``; gunicorn's
gthread worker closes kept-alive connections it cannot serve in time). No third-party client:
what we measure is the server.

``Sampler(dsn, app_name)``: a thread that counts the server's backends with that
``application_name`` every ``interval`` seconds; ``.peak`` is the largest count seen.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import psycopg2


@dataclass
class LoadResult:
    ok: int = 0
    stalls: int = 0
    errors: int = 0
    retried: int = 0
    by_path: Dict[str, int] = field(default_factory=dict)
    error_samples: List[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str) -> int:
    writer.write(f"GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
        elif name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def _client(i: int, host: str, port: int, paths: Sequence[str], deadline: float, timeout: float,
                  result: LoadResult, counts: Counter) -> None:
    conn: Optional[tuple] = None
    n = i
    retry: Optional[str] = None
    while time.monotonic() < deadline:
        if retry is None:
            path = paths[n % len(paths)]
            n += 1
        else:
            path = retry
        reused = conn is not None
        try:
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            status = await asyncio.wait_for(_get(conn[0], conn[1], host, path), timeout)
        except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as exc:
            if reused and retry is None and not (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                conn[1].close()  # type: ignore[index]
                conn, retry = None, path
                result.retried += 1
                continue
            result.errors += 1
            if len(result.error_samples) < 10:
                result.error_samples.append(f"{path}: {type(exc).__name__}: {exc}")
            status = None
        except asyncio.TimeoutError:
            result.stalls += 1
            if len(result.error_samples) < 10:
                result.error_samples.append(f"{path}: no response in {timeout} s")
            status = None
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            result.errors += 1
            if len(result.error_samples) < 10:
                result.error_samples.append(f"{path}: {type(exc).__name__}: {exc}")
            status = None
        retry = None
        if status is None:
            if conn is not None:
                conn[1].close()
            conn = None
            continue
        if status == 200:
            result.ok += 1
            counts[path] += 1
        else:
            result.errors += 1
            if len(result.error_samples) < 10:
                result.error_samples.append(f"{path}: HTTP {status}")
    if conn is not None:
        conn[1].close()


def load(host: str, port: int, paths: Sequence[str], clients: int, seconds: float,
         timeout: float = 10.0) -> LoadResult:
    result = LoadResult()
    counts: Counter = Counter()

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(_client(i, host, port, paths, deadline, timeout, result, counts)
                               for i in range(clients)))

    start = time.monotonic()
    asyncio.run(main())
    result.seconds = time.monotonic() - start
    result.by_path = dict(counts)
    return result


class Sampler(threading.Thread):
    def __init__(self, dsn: str, app_name: str, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.dsn, self.app_name, self.interval = dsn, app_name, interval
        self.peak = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        conn = psycopg2.connect(self.dsn, application_name=self.app_name + "-sampler")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not self._stop_event.is_set():
                    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                (self.app_name,))
                    self.peak = max(self.peak, cur.fetchone()[0])
                    self.samples += 1
                    self._stop_event.wait(self.interval)
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)
