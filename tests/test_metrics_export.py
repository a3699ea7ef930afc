"""Metrics the way users collect them: ``fastpool.prometheus.Collector`` in a real
``prometheus_client`` registry and ``fastpool.otel`` read by the OpenTelemetry SDK's in-memory
reader, against the real server on both cores; and the Django ``FASTPOOL_METRICS`` setting."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

import fastpool
from fastpool import timings

prometheus_client = pytest.importorskip("prometheus_client")
pytest.importorskip("opentelemetry.sdk.metrics")

from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from fastpool import otel  # noqa: E402
from fastpool.prometheus import Collector  # noqa: E402

SECRET = "s3cr3t-Pa55"


def wait_until(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            assert value, "condition not met in time"
            return value
        time.sleep(0.005)


class Exhausted:
    """A pool of max_size 2 with both connections borrowed and one request queued on it.
    :meth:`finish` makes one more request time out (nothing is returned meanwhile: a certain
    PoolTimeout), then returns everything: 5 requests, 4 served, 1 timeout, 4 returns."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.held = [pool.getconn(), pool.getconn()]
        self.got: List[Any] = []
        self.thread = threading.Thread(target=lambda: self.got.append(pool.getconn(timeout=60)))
        self.thread.start()
        wait_until(lambda: pool.stats()["requests_waiting"] == 1)

    def finish(self) -> None:
        with pytest.raises(fastpool.PoolTimeout):
            self.pool.getconn(timeout=0.05)
        for conn in self.held:
            self.pool.putconn(conn)
        self.thread.join(60)
        self.pool.putconn(self.got[0])


def collected(ref: "weakref.ref[Any]", timeout: float = 30.0) -> bool:
    """True once ``ref``'s object is garbage-collected (a closed pool's worker threads may take
    a moment to end and drop their references)."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        if ref() is None:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def settled_stats(pool: Any, read: Callable[[], Any]) -> Tuple[Dict[str, int], Any]:
    """stats() and ``read()`` taken with nothing changing in between (a background task may
    run between the two: take both again until stats() is the same before and after)."""
    for _ in range(50):
        before = pool.stats()
        got = read()
        if pool.stats() == before:
            return before, got
    raise AssertionError("stats() never settled")


# -- prometheus_client ------------------------------------------------------------------------------


def prom_samples(registry: Any, pool_name: str) -> Dict[str, float]:
    """{sample name: value} of one pool, read back through the registry's text exposition."""
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            if s.labels.get("pool") == pool_name:
                out[s.name] = s.value
    return out


def test_collector_matches_stats_under_borrowing(make_pool: Any) -> None:
    pool = make_pool(min_size=2, max_size=2, name="prom-borrow", timeout=5, open=False)
    registry = CollectorRegistry()
    collector = Collector(pool, labels={"service": "web"}, histograms=True)
    registry.register(collector)
    pool.open(wait=True)  # after subscribing: the connects are observed too

    with pool.connection() as conn:
        conn.cursor().execute("SELECT 1")
        stats, got = settled_stats(pool, lambda: prom_samples(registry, "prom-borrow"))
        assert (got["fastpool_pool_available"], got["fastpool_pool_used"]) == (1, 1)

    busy = Exhausted(pool)
    stats, got = settled_stats(pool, lambda: prom_samples(registry, "prom-borrow"))
    assert got["fastpool_requests_waiting"] == 1
    assert (got["fastpool_pool_available"], got["fastpool_pool_used"]) == (0, 2)
    busy.finish()

    stats, got = settled_stats(pool, lambda: prom_samples(registry, "prom-borrow"))
    assert got["fastpool_requests_timeouts_total"] == stats["requests_timeouts"] == 1
    for key, metric in fastpool.metrics.METRICS.items():
        assert got["fastpool_" + metric.name] == stats[key] / metric.divisor, key
    assert got["fastpool_connections_total"] == 2 and got["fastpool_requests_total"] == 5
    assert got["fastpool_usage_seconds_total"] > 0 and got["fastpool_connections_seconds_total"] > 0
    assert 'service="web"' in generate_latest(registry).decode()
    # histograms: one observation per event (4 successful getconns, 4 putconns, 2 connects)
    assert got["fastpool_connection_wait_seconds_count"] == 4
    assert got["fastpool_connection_use_seconds_count"] == 4
    assert got["fastpool_connection_create_seconds_count"] == stats["connections_num"] == 2
    assert abs(got["fastpool_connection_use_seconds_sum"] - stats["usage_ms"] / 1000) < 0.006
    assert abs(got["fastpool_connection_create_seconds_sum"] - stats["connections_ms"] / 1000) < 0.004
    collector.close()
    assert pool._waited_hook is None  # closed: borrowing is untouched again
    pool.putconn(pool.getconn())
    assert prom_samples(registry, "prom-borrow")["fastpool_connection_use_seconds_count"] == 4


def test_collector_histogram_buckets(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1, name="prom-buckets", timeout=10)
    registry = CollectorRegistry()
    registry.register(Collector([pool], histograms=True))
    conn = pool.getconn()
    time.sleep(0.06)  # a borrow longer than 0.05 s: lands above the 0.05 bucket
    pool.putconn(conn)
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    buckets = {s.labels["le"]: s.value for s in fams["fastpool_connection_use_seconds"].samples
               if s.name.endswith("_bucket")}
    assert list(buckets) == [repr(float(b)) for b in timings.BUCKETS] + ["+Inf"]
    used = fams["fastpool_connection_use_seconds"].samples
    (total,) = [s.value for s in used if s.name.endswith("_sum")]
    assert total >= 0.06
    # one observation: each cumulative bucket counts it iff it is <= the bound ("le")
    assert buckets == {**{repr(float(b)): float(total <= b) for b in timings.BUCKETS}, "+Inf": 1.0}
    assert buckets["0.05"] == 0


def test_collector_types_units_and_duplicate_registration(make_pool: Any) -> None:
    pool = make_pool(min_size=0, name="prom-types")
    registry = CollectorRegistry()
    registry.register(Collector([pool]))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(Collector([pool]))  # describe() names the families at register time
    fams = {f.name: f for f in registry.collect()}
    for key, metric in fastpool.metrics.METRICS.items():
        base = "fastpool_" + (metric.name[: -len("_total")] if metric.type == "counter" else metric.name)
        assert fams[base].type == metric.type, key
        assert fams[base].unit == metric.unit, key
        if metric.unit:
            assert base.endswith("_" + metric.unit)
    text = generate_latest(registry).decode()
    assert "# TYPE fastpool_requests_wait_seconds_total counter" in text
    # the same table as prometheus_text(): one source of truth for both outputs
    assert prometheus_text_names(pool) == {
        s.name for f in registry.collect() for s in f.samples if not s.name.endswith("_created")
    }


def prometheus_text_names(pool: Any) -> set:
    return {line.split("{")[0] for line in fastpool.prometheus_text(pool).splitlines()
            if not line.startswith("#")}


def test_collector_holds_pools_weakly(Pool: type, dsn: str) -> None:
    """A closed pool leaves the exposition, and the collector keeps no reference to it: it is
    garbage-collected. (A closed pool, because an open one is kept alive by its own maintenance
    timer today, collector or not: issue 11.)"""
    everything = CollectorRegistry()
    everything.register(Collector())
    listed = CollectorRegistry()
    name = f"prom-weak-{uuid.uuid4().hex[:8]}"
    pool = Pool(dsn, min_size=1, max_size=10, name=name)
    listed.register(Collector([pool]))
    pool.wait()
    pool.putconn(pool.getconn())
    assert prom_samples(everything, name)["fastpool_requests_total"] == 1
    assert prom_samples(listed, name)["fastpool_requests_total"] == 1
    pool.close()
    assert prom_samples(everything, name) == {} and prom_samples(listed, name) == {}
    ref = weakref.ref(pool)
    del pool
    assert collected(ref), "a collector keeps the pool alive"
    assert prom_samples(listed, name) == {}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_histograms_after_fork_with_lock_held() -> None:
    """A thread held the histogram lock when the process forked: the child must not deadlock."""
    from fastpool.prometheus import _Histograms

    h = _Histograms(timings.BUCKETS)
    with h._lock:  # as if another thread were observing at fork time
        pid = os.fork()
        if pid == 0:  # child: observe, with a watchdog in case it hangs
            import signal

            signal.alarm(10)
            try:
                h.connection_used("p", 0.001)
                os._exit(0)
            except BaseException:
                os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_collector_arguments() -> None:
    with pytest.raises(ValueError, match="pool"):
        Collector(labels={"pool": "x"})
    with pytest.raises(TypeError, match="labels"):
        Collector(labels=["service"])
    with pytest.raises(ValueError, match="prefix"):
        Collector(prefix="1bad")
    with pytest.raises(TypeError, match="Pool"):
        Collector(42)


# -- OpenTelemetry ----------------------------------------------------------------------------------


class OTel:
    """A fresh SDK MeterProvider with an in-memory reader; ``read()`` -> {metric name: points}."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def read(self) -> Dict[str, List[Any]]:
        data = self.reader.get_metrics_data()
        out: Dict[str, List[Any]] = {}
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    out.setdefault(m.name, []).extend(m.data.data_points)
        return out

    def points(self, data: Dict[str, List[Any]], metric: str, pool: str, **attrs: str) -> List[Any]:
        want = {"db.client.connection.pool.name": pool,
                **{f"db.client.connection.{k}": v for k, v in attrs.items()}}
        return [p for p in data.get(metric, []) if dict(p.attributes) == want]

    def value(self, data: Dict[str, List[Any]], metric: str, pool: str, **attrs: str) -> float:
        pts = self.points(data, metric, pool, **attrs)
        assert len(pts) == 1, (metric, pts)
        return pts[0].value


@pytest.fixture
def sdk() -> Any:
    o = OTel()
    yield o
    o.provider.shutdown()


def test_otel_matches_stats_under_borrowing(make_pool: Any, sdk: OTel) -> None:
    pool = make_pool(min_size=2, max_size=2, name="otel-borrow", timeout=5, open=False)
    inst = otel.instrument(pool, meter_provider=sdk.provider, histograms=True)
    pool.open(wait=True)  # after instrumenting: the connects are observed too
    name = "otel-borrow"

    with pool.connection() as conn:
        conn.cursor().execute("SELECT 1")
        stats, data = settled_stats(pool, sdk.read)
        assert sdk.value(data, "db.client.connection.count", name, state="idle") == 1
        assert sdk.value(data, "db.client.connection.count", name, state="used") == 1

    busy = Exhausted(pool)
    stats, data = settled_stats(pool, sdk.read)
    assert sdk.value(data, "db.client.connection.pending_requests", name) == 1
    assert sdk.value(data, "db.client.connection.count", name, state="idle") == 0
    assert sdk.value(data, "db.client.connection.count", name, state="used") == 2
    assert sdk.value(data, "db.client.connection.timeouts", name) == 0
    busy.finish()

    stats, data = settled_stats(pool, sdk.read)
    assert sdk.value(data, "db.client.connection.timeouts", name) == stats["requests_timeouts"] == 1
    assert sdk.value(data, "db.client.connection.max", name) == stats["pool_max"] == 2
    assert sdk.value(data, "db.client.connection.idle.min", name) == stats["pool_min"] == 2
    assert sdk.value(data, "db.client.connection.pending_requests", name) == 0
    assert sdk.value(data, "db.client.connection.count", name, state="idle") == stats["pool_available"]
    assert "db.client.connection.idle.max" not in data  # not meaningful here: see fastpool.otel

    # histograms: one observation per event, and the sums agree with stats()' own sums
    create = sdk.points(data, "db.client.connection.create_time", name)[0]
    wait = sdk.points(data, "db.client.connection.wait_time", name)[0]
    use = sdk.points(data, "db.client.connection.use_time", name)[0]
    assert create.count == stats["connections_num"] == 2
    assert wait.count == stats["requests_num"] - stats["requests_errors"] == 4
    assert use.count == 4
    assert abs(create.sum - stats["connections_ms"] / 1000) < 0.002 * create.count
    assert abs(use.sum - stats["usage_ms"] / 1000) < 0.002 * use.count
    assert use.min > 0 and wait.min >= 0
    assert list(wait.explicit_bounds) == list(otel.BUCKETS)
    inst.close()
    assert sdk.points(sdk.read(), "db.client.connection.max", name) == []


def test_otel_queued_wait_is_observed(make_pool: Any, sdk: OTel) -> None:
    """A request that queues is timed from the miss to the handoff (the policy's slow path)."""
    pool = make_pool(min_size=1, max_size=1, name="otel-queue", timeout=10)
    otel.instrument(pool, meter_provider=sdk.provider, histograms=True)
    pool.wait()
    held = pool.getconn()
    got: List[Any] = []
    t = threading.Thread(target=lambda: got.append(pool.getconn()))
    t.start()
    wait_until(lambda: pool.stats()["requests_waiting"] == 1)
    time.sleep(0.05)  # the measured wait: long enough to tell from a fast-path hand-out
    pool.putconn(held)
    t.join(30)
    pool.putconn(got[0])
    stats, data = settled_stats(pool, sdk.read)
    wait = sdk.points(data, "db.client.connection.wait_time", "otel-queue")[0]
    assert wait.count == 2 and stats["requests_queued"] == 1
    assert wait.max >= 0.05
    assert abs(wait.max - stats["requests_wait_ms"] / 1000) < 0.002


def test_otel_histograms_off_and_weak_pools(Pool: type, dsn: str, sdk: OTel) -> None:
    name = f"otel-all-{uuid.uuid4().hex[:8]}"
    inst = otel.instrument(meter_provider=sdk.provider)  # histograms off: the default
    pool = Pool(dsn, min_size=1, max_size=10, name=name)  # made after instrument(): still reported
    listed = otel.instrument(pool, meter_provider=sdk.provider, histograms=True)  # for this one
    try:
        pool.wait()
        pool.putconn(pool.getconn())
        data = sdk.read()
        assert sdk.value(data, "db.client.connection.max", name) == 10  # once, not per source
        assert sdk.points(data, "db.client.connection.use_time", name)[0].count == 1
        listed.close()
        assert pool._waited_hook is None and pool._created_hook is None  # fast paths untouched
        pool.putconn(pool.getconn())
        assert sdk.points(sdk.read(), "db.client.connection.use_time", name)[0].count == 1
        pool.close()
        assert sdk.points(sdk.read(), "db.client.connection.max", name) == []
        ref = weakref.ref(pool)
        del pool
        assert collected(ref), "instrumentation keeps the pool alive"
    finally:
        inst.close()
        listed.close()


def test_otel_all_pools_histograms_for_later_pools(Pool: type, dsn: str, sdk: OTel) -> None:
    name = f"otel-later-{uuid.uuid4().hex[:8]}"
    inst = otel.instrument(meter_provider=sdk.provider, histograms=True)
    pool = Pool(dsn, min_size=1, max_size=10, name=name)
    try:
        pool.wait()
        pool.putconn(pool.getconn())
        data = sdk.read()
        assert sdk.points(data, "db.client.connection.use_time", name)[0].count == 1
        assert sdk.points(data, "db.client.connection.create_time", name)[0].count == 1
        inst.close()
        assert pool._waited_hook is None  # closed: the fast paths are untouched again
        pool.putconn(pool.getconn())
    finally:
        inst.close()
        pool.close()


def test_otel_names_follow_semantic_conventions() -> None:
    """Every name emitted is the constant of the semantic conventions' Python package."""
    semconv = pytest.importorskip("opentelemetry.semconv._incubating.metrics.db_metrics")
    attrs = pytest.importorskip("opentelemetry.semconv._incubating.attributes.db_attributes")
    assert otel.POOL_NAME == attrs.DB_CLIENT_CONNECTION_POOL_NAME
    assert otel.STATE == attrs.DB_CLIENT_CONNECTION_STATE
    for const in ("COUNT", "MAX", "IDLE_MIN", "PENDING_REQUESTS", "TIMEOUTS", "CREATE_TIME",
                  "WAIT_TIME", "USE_TIME"):
        assert getattr(otel, const) == getattr(semconv, f"DB_CLIENT_CONNECTION_{const}"), const


def test_otel_arguments() -> None:
    with pytest.raises(TypeError, match="histograms"):
        otel.instrument([], histograms="yes")
    with pytest.raises(TypeError, match="Pool"):
        otel.instrument(42)


# -- timings and secrets ----------------------------------------------------------------------------


def test_broken_listener_never_breaks_borrowing(make_pool: Any, caplog: Any) -> None:
    class Broken:
        def connection_waited(self, name: str, s: float) -> None:
            raise RuntimeError("exporter bug")

        connection_used = connection_created = connection_waited

    pool = make_pool(min_size=1, max_size=10, name="broken-listener")
    listener = Broken()
    timings.subscribe(listener, [pool])
    try:
        pool.wait()
        for _ in range(3):
            pool.putconn(pool.getconn())
    finally:
        timings.unsubscribe(listener, [pool])
    assert pool.stats()["requests_num"] == 3
    reports = [r for r in caplog.records if "timing listener" in r.getMessage()]
    assert 1 <= len(reports) <= 3  # once per listener method, not per event
    with pytest.raises(TypeError, match="connection_waited"):
        timings.subscribe(object(), [pool])


def test_no_password_in_labels_or_attributes(make_pool: Any, dsn: str, sdk: OTel) -> None:
    # trust authentication: the server ignores the password, the pool must not repeat it
    pool = make_pool(conninfo=f"{dsn} password={SECRET}", min_size=1, max_size=10)
    url_pool = make_pool(kwargs={"password": SECRET}, min_size=0)
    registry = CollectorRegistry()
    registry.register(Collector())
    inst = otel.instrument(meter_provider=sdk.provider, histograms=True)
    pool.wait()
    pool.putconn(pool.getconn())
    inst.close()  # (the observable instruments are read below; closing stops the histograms)
    text = generate_latest(registry).decode()
    assert pool.name in text and url_pool.name in text
    data = sdk.read()
    assert data
    for part in (SECRET, SECRET[:6], SECRET[-5:]):
        assert part not in text
        assert part not in fastpool.prometheus_text([pool, url_pool])
        assert part not in json.dumps({k: [dict(p.attributes) for p in v] for k, v in data.items()})


# -- Django -----------------------------------------------------------------------------------------

DJANGO_SCRIPT = r"""
import json, os, sys
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

import psycopg2.extensions
import django
from django.conf import settings
p = psycopg2.extensions.parse_dsn(os.environ["FASTPOOL_TEST_DSN"])
settings.configure(
    INSTALLED_APPS=["django_fastpool"],
    FASTPOOL_METRICS=json.loads(os.environ["FP_METRICS"]),
    DATABASES={"default": {
        "ENGINE": "django_fastpool", "NAME": p.get("dbname", "test"), "USER": p.get("user", ""),
        "PASSWORD": p.get("password", ""), "HOST": p.get("host", ""), "PORT": p.get("port", ""),
        "OPTIONS": {"pool": {"min_size": 1, "max_size": 3}},
    }},
)
if os.environ.get("FP_PRE_REGISTER"):  # the user registered a collector by hand as well
    from prometheus_client import REGISTRY
    from fastpool.prometheus import Collector
    REGISTRY.register(Collector())
try:
    django.setup()
except Exception as exc:
    print("RESULT " + json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
    sys.exit(0)
from django.db import connection
with connection.cursor() as cur:
    cur.execute("SELECT 1")
connection.close()
from prometheus_client import REGISTRY, generate_latest
text = generate_latest(REGISTRY).decode()
data = reader.get_metrics_data()
names = sorted({m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics})
from django_fastpool import metrics as dm
again = dm.setup_from_settings()  # idempotent: no second registration
print("RESULT " + json.dumps({
    "prom": [l for l in text.splitlines() if l.startswith("fastpool_pool_max")],
    "otel": names, "registered": len(again),
    "prom_histograms": sum(1 for l in text.splitlines()
                           if l.startswith('fastpool_connection_use_seconds_count{pool="django:default"')),
}))
"""


def run_django(dsn: str, impl: str, wanted: Any, pre_register: bool = False) -> Dict[str, Any]:
    env = dict(os.environ, FASTPOOL_TEST_DSN=dsn, FASTPOOL_IMPL=impl, FP_METRICS=json.dumps(wanted),
               FP_PRE_REGISTER="1" if pre_register else "")
    env.pop("DJANGO_SETTINGS_MODULE", None)
    proc = subprocess.run([sys.executable, "-c", DJANGO_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL,
                          cwd=str(Path(__file__).resolve().parent.parent))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and len(lines) == 1, proc.stdout + proc.stderr
    return json.loads(lines[0][len("RESULT "):])


@pytest.mark.slow  # a fresh interpreter importing Django and both SDKs
def test_django_setting_registers_both(dsn: str, impl: str) -> None:
    pytest.importorskip("django")
    out = run_django(dsn, impl, ["prometheus", "opentelemetry"])
    assert out["prom"] == ['fastpool_pool_max{pool="django:default"} 3.0']
    assert "db.client.connection.count" in out["otel"]
    assert "db.client.connection.use_time" not in out["otel"]  # histograms are opt-in
    assert out["prom_histograms"] == 0
    assert out["registered"] == 2


@pytest.mark.slow  # a fresh interpreter importing Django and both SDKs
def test_django_setting_rejects_unknown(dsn: str, impl: str) -> None:
    pytest.importorskip("django")
    out = run_django(dsn, impl, ["statsd"])
    assert "FASTPOOL_METRICS" in out["error"] and "statsd" in out["error"]
    out = run_django(dsn, impl, "prometheus")
    assert "FASTPOOL_METRICS must be a list" in out["error"]
    out = run_django(dsn, impl, {"prometheus": {"histogram": True}})
    assert "FASTPOOL_METRICS['prometheus']" in out["error"] and "histogram" in out["error"]
    out = run_django(dsn, impl, ["prometheus"], pre_register=True)
    assert "ImproperlyConfigured" in out["error"] and "registered already" in out["error"]


@pytest.mark.slow  # a fresh interpreter importing Django and both SDKs
def test_django_setting_with_options(dsn: str, impl: str) -> None:
    pytest.importorskip("django")
    out = run_django(dsn, impl, {"prometheus": {"histograms": True, "labels": {"service": "web"}},
                                 "opentelemetry": {"histograms": True}})
    assert out["prom"] == ['fastpool_pool_max{pool="django:default",service="web"} 3.0']
    assert out["prom_histograms"] == 1
    assert "db.client.connection.count" in out["otel"]
    assert "db.client.connection.use_time" in out["otel"]
