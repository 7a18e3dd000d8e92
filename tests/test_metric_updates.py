"""``metric_updates``: a series updated through ``adder``/``observer`` exposes what the same
updates through prometheus-client's public ``inc``/``dec``/``observe`` expose."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import generate_latest

from mtlsproxy.metric_updates import LoopValue, adder, install_loop_values, observer
from mtlsproxy.metrics import PHASE_BUCKETS, REMAINING_BUCKETS

# Amounts on, just below and just above every bound, and beyond the last one.
EDGES = sorted(
    {b * f for b in PHASE_BUCKETS + REMAINING_BUCKETS for f in (1.0, 1 - 1e-9, 1 + 1e-9)}
)
AMOUNTS = st.one_of(
    st.sampled_from(EDGES),
    st.floats(min_value=-1e9, max_value=1e9, allow_nan=False),
    st.just(math.inf),
)


def _pair(
    kind: type, **kwargs: object
) -> tuple[CollectorRegistry, object, CollectorRegistry, object]:
    public, fast = CollectorRegistry(), CollectorRegistry()
    one = kind("t", "help", ["listener"], registry=public, **kwargs)
    two = kind("t", "help", ["listener"], registry=fast, **kwargs)
    return public, one.labels("a"), fast, two.labels("a")  # type: ignore[attr-defined]


@given(st.lists(AMOUNTS, max_size=40), st.sampled_from([PHASE_BUCKETS, REMAINING_BUCKETS]))
def test_observer_fills_the_buckets_observe_fills(amounts: list[float], buckets: tuple) -> None:
    public, series, fast, same = _pair(Histogram, buckets=buckets)
    observe = observer(same)
    for amount in amounts:
        series.observe(amount)  # type: ignore[attr-defined]
        observe(amount)
    assert generate_latest(fast) == generate_latest(public)


@given(st.lists(st.floats(min_value=0, max_value=1e12, allow_nan=False), max_size=40))
def test_adder_counts_what_inc_counts(amounts: list[float]) -> None:
    public, series, fast, same = _pair(Counter)
    add = adder(same)
    for amount in amounts:
        series.inc(amount)  # type: ignore[attr-defined]
        add(amount)
    assert generate_latest(fast) == generate_latest(public)


@given(st.lists(st.booleans(), max_size=40))
def test_adder_moves_a_gauge_as_inc_and_dec_do(ups: list[bool]) -> None:
    public, series, fast, same = _pair(Gauge)
    add = adder(same)
    for up in ups:
        if up:
            series.inc()  # type: ignore[attr-defined]
        else:
            series.dec()  # type: ignore[attr-defined]
        add(1.0 if up else -1.0)
    assert generate_latest(fast) == generate_latest(public)
    assert same._value.get() == sum(1 if up else -1 for up in ups)  # type: ignore[attr-defined]


def test_loop_values_expose_what_prometheus_clients_values_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``install_loop_values``: the same series, updated the same ways, expose the same text
    as with prometheus-client's own (locked) values."""

    def exercise(registry: CollectorRegistry) -> object:
        count = Counter("t_total", "h", ["l"], registry=registry).labels("a")
        count.inc()
        adder(count)(2.0)
        level = Gauge("t_open", "h", ["l"], registry=registry).labels("a")
        level.inc(3)
        adder(level)(-1.0)
        Gauge("t_expiry", "h", registry=registry).set(1234.5)
        seconds = Histogram("t_seconds", "h", ["l"], buckets=PHASE_BUCKETS, registry=registry)
        seconds.labels("a").observe(0.0003)
        observer(seconds.labels("a"))(0.002)
        return count

    locked = CollectorRegistry()
    exercise(locked)
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)  # restored after the test
    install_loop_values()
    unlocked = CollectorRegistry()
    series = exercise(unlocked)
    assert type(series._value) is LoopValue  # type: ignore[attr-defined]
    assert generate_latest(unlocked) == generate_latest(locked)
