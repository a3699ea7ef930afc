"""``fastpool.prometheus_text``: Pool.stats() in the Prometheus text exposition format (0.0.4)."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Tuple

import pytest

import fastpool
from fastpool.metrics import METRICS, prometheus_text

GAUGES = {"pool_min", "pool_max", "pool_size", "pool_available", "pool_used", "requests_waiting"}
MS_KEYS = {"requests_wait_ms", "connections_ms", "usage_ms"}

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


class FakePool:
    def __init__(self, name: str, stats: Dict[str, int]) -> None:
        self.name = name
        self._stats = stats

    def stats(self) -> Dict[str, int]:
        return dict(self._stats)


def fake_stats(seed: int = 1) -> Dict[str, int]:
    return {key: seed * 1000 + i * 7 + 3 for i, key in enumerate(METRICS)}


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], value)


def parse(text: str) -> Dict[str, Dict[str, Any]]:
    """A strict parser of the exposition format: {family: {help, type, samples: [(labels, value)]}}.

    Checks what Prometheus requires: HELP and TYPE once per family, before its samples; the
    samples of a family contiguous; a valid name, label syntax and float value on every line.
    """
    assert text.endswith("\n")
    families: Dict[str, Dict[str, Any]] = {}
    current = None
    for line in text.splitlines():
        assert line, "no blank lines"
        if line.startswith("# HELP "):
            name, help_ = line[7:].split(" ", 1)
            assert name not in families, f"family {name} appears twice"
            families[name] = {"help": help_, "type": None, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            name, mtype = line[7:].split(" ")
            assert name == current and families[name]["type"] is None
            assert mtype in ("counter", "gauge", "untyped")
            families[name]["type"] = mtype
        else:
            m = _SAMPLE.match(line)
            assert m, f"bad sample line {line!r}"
            name, _, label_text, value = m.groups()
            assert name == current, f"sample {name} outside its family ({current})"
            assert families[name]["type"] is not None
            labels: Dict[str, str] = {}
            if label_text:
                pos = 0
                while pos < len(label_text):
                    lm = _LABEL.match(label_text, pos)
                    assert lm, f"bad labels in {line!r}"
                    assert lm.group(1) not in labels
                    labels[lm.group(1)] = unescape(lm.group(2))
                    pos = lm.end()
            families[name]["samples"].append((labels, float(value)))
    return families


def expected_families(prefix: str = "fastpool") -> Dict[str, Tuple[str, str]]:
    """stats() key -> (metric name, type) as the module documents it."""
    out = {}
    for key in METRICS:
        mtype = "gauge" if key in GAUGES else "counter"
        name = key
        if mtype == "counter":
            name = {"requests_num": "requests", "connections_num": "connections"}.get(key, key)
            name = re.sub(r"_ms$", "_seconds", name) + "_total"
        out[key] = (f"{prefix}_{name}" if prefix else name, mtype)
    return out


def expected_value(key: str, value: int) -> float:
    return value / 1000 if key in MS_KEYS else value


# -- the format -----------------------------------------------------------------------------------


def test_names_types_and_values() -> None:
    stats = fake_stats()
    fams = parse(prometheus_text(FakePool("main", stats)))
    expected = expected_families()
    assert set(fams) == {name for name, _ in expected.values()}
    for key, (name, mtype) in expected.items():
        fam = fams[name]
        assert fam["type"] == mtype, name
        assert fam["help"]
        assert fam["samples"] == [({"pool": "main"}, expected_value(key, stats[key]))], name
        if mtype == "counter":
            assert name.endswith("_total")
    # families in stats() order: gauges (the pool's state) first
    assert list(fams) == [expected[k][0] for k in stats]


def test_every_stats_key_has_a_metric(Pool: type, dsn: str) -> None:
    pool = Pool(dsn, min_size=0, open=False)
    assert set(pool.stats()) == set(METRICS)


def test_milliseconds_become_seconds() -> None:
    stats = dict(fake_stats(), requests_wait_ms=1234, connections_ms=5, usage_ms=0)
    fams = parse(prometheus_text(FakePool("p", stats)))
    assert fams["fastpool_requests_wait_seconds_total"]["samples"][0][1] == 1.234
    assert fams["fastpool_connections_seconds_total"]["samples"][0][1] == 0.005
    assert fams["fastpool_usage_seconds_total"]["samples"][0][1] == 0
    assert "fastpool_requests_wait_seconds_total{pool=\"p\"} 1.234\n" in prometheus_text(FakePool("p", stats))


def test_several_pools_grouped_by_family() -> None:
    pools = [FakePool("a", fake_stats(1)), FakePool("b", fake_stats(2)), FakePool("c", fake_stats(3))]
    text = prometheus_text(pools)
    fams = parse(text)  # checks HELP/TYPE once per family and contiguous samples
    assert len(fams) == len(METRICS)
    expected = expected_families()
    for key, (name, _) in expected.items():
        assert fams[name]["samples"] == [
            ({"pool": p.name}, expected_value(key, p.stats()[key])) for p in pools
        ]
    assert text.count("# TYPE ") == len(METRICS)
    assert prometheus_text(tuple(pools)) == text  # any iterable
    assert prometheus_text(p for p in pools) == text
    assert prometheus_text([]) == ""


def test_label_values_are_escaped() -> None:
    name = 'we"ird\\pool\nname'
    text = prometheus_text(FakePool(name, fake_stats()), labels={"service": 'a"b', "host": "x\\y"})
    assert 'pool="we\\"ird\\\\pool\\nname"' in text
    fams = parse(text)
    labels = fams["fastpool_pool_size"]["samples"][0][0]
    assert labels == {"pool": name, "service": 'a"b', "host": "x\\y"}
    assert list(labels) == ["pool", "service", "host"]


def test_prefix() -> None:
    fams = parse(prometheus_text(FakePool("p", fake_stats()), prefix="myapp_db"))
    assert set(fams) == {name for name, _ in expected_families("myapp_db").values()}
    fams = parse(prometheus_text(FakePool("p", fake_stats()), prefix=""))
    assert "pool_size" in fams and "requests_total" in fams


def test_unknown_stats_are_exposed_untyped() -> None:
    fams = parse(prometheus_text(FakePool("p", dict(fake_stats(), brand_new_stat=5))))
    assert fams["fastpool_brand_new_stat"]["type"] == "untyped"
    assert fams["fastpool_brand_new_stat"]["samples"] == [({"pool": "p"}, 5)]


@pytest.mark.parametrize("kwargs, error", [
    ({"labels": {"pool": "x"}}, ValueError),
    ({"labels": {"bad-name": "x"}}, ValueError),
    ({"labels": {"__reserved": "x"}}, ValueError),
    ({"labels": {"0abc": "x"}}, ValueError),
    ({"prefix": "1bad"}, ValueError),
    ({"prefix": "bad prefix"}, ValueError),
    ({"prefix": None}, TypeError),
])
def test_invalid_arguments(kwargs: Dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        prometheus_text(FakePool("p", fake_stats()), **kwargs)


def test_duplicate_pool_names_rejected() -> None:
    with pytest.raises(ValueError, match="dup"):
        prometheus_text([FakePool("dup", fake_stats()), FakePool("dup", fake_stats())])
    with pytest.raises(TypeError):
        prometheus_text(42)
    with pytest.raises(TypeError):
        prometheus_text([FakePool("a", fake_stats()), "not a pool"])


def test_exported_from_package() -> None:
    assert fastpool.prometheus_text is prometheus_text
    assert "prometheus_text" in fastpool.__all__


# -- real pools, both cores -----------------------------------------------------------------------


def test_real_pools(make_pool: Any) -> None:
    a = make_pool(min_size=1, max_size=2, name="metrics-a", timeout=0.2)
    b = make_pool(min_size=0, max_size=1, name='metrics "b"', timeout=0.1)
    a.wait()
    with a.connection() as conn:
        conn.cursor().execute("SELECT 1")
    held = b.getconn()
    with pytest.raises(fastpool.PoolTimeout):
        b.getconn()  # one request error
    b.putconn(held)

    before = [a.stats(), b.stats()]
    text = prometheus_text([a, b], labels={"service": "test"})
    after = [a.stats(), b.stats()]
    if before != after:  # a background task changed something in between: take it again
        before = after
        text = prometheus_text([a, b], labels={"service": "test"})
    fams = parse(text)
    for key, (name, mtype) in expected_families().items():
        assert fams[name]["type"] == mtype
        assert fams[name]["samples"] == [
            ({"pool": "metrics-a", "service": "test"}, expected_value(key, before[0][key])),
            ({"pool": 'metrics "b"', "service": "test"}, expected_value(key, before[1][key])),
        ], name
    assert fams["fastpool_requests_errors_total"]["samples"][1][1] == 1
    assert fams["fastpool_pool_max"]["samples"][0][1] == 2
    assert fams["fastpool_requests_total"]["samples"][0][1] >= 1


def test_accepted_by_prometheus_client(make_pool: Any) -> None:
    """Cross-check with the reference parser when it is installed (it is not a dependency)."""
    parser = pytest.importorskip("prometheus_client.parser")
    pool = make_pool(min_size=0, name='odd "name" \\ here')
    text = prometheus_text([pool, FakePool("other", fake_stats())], labels={"env": "ci"})
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    stats = pool.stats()
    for key, (name, mtype) in expected_families().items():
        base = name[: -len("_total")] if mtype == "counter" else name
        fam = families[base]
        assert fam.type == mtype
        samples: List[Any] = [s for s in fam.samples if s.labels["pool"] == 'odd "name" \\ here']
        assert len(samples) == 1 and samples[0].name == name
        assert samples[0].labels == {"pool": 'odd "name" \\ here', "env": "ci"}
        assert samples[0].value == expected_value(key, stats[key])
