"""A labelled series' update at the cost of the addition itself.

prometheus-client's ``Counter.inc``, ``Gauge.inc`` and ``Histogram.observe`` check on every
call that the metric is a labelled child and the amount allowed, then walk a histogram's
buckets in Python: three or four Python calls around each addition, and a dozen updates per
connection. The series the proxy updates per connection are children looked up once
(``Metrics``, ``ListenerRuntime``), so the checks hold by construction; these functions return
the updates of such a child as its value objects' own ``inc`` (prometheus-client's
``MutexValue``, or ``worker_metrics.WorkerValue`` with workers), so the values, the files and
the exposition are the ones the public methods make (``tests/test_metric_updates.py``).

A single proxy process keeps its values in ``LoopValue``s (``install_loop_values``): a float,
without the lock prometheus-client's ``MutexValue`` takes on every update (~0.3 us of the
~0.36 us an increment costs).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import values

Update = Callable[[float], None]


def adder(series: Any) -> Update:
    """``series.inc(amount)`` for a child of a labelled Counter or Gauge (``amount`` negative
    for a gauge's ``dec``; a counter's amounts are the caller's to keep non-negative)."""
    return series._value.inc  # type: ignore[no-any-return]


def observer(series: Any) -> Update:
    """``series.observe(amount)`` for a child of a labelled Histogram: the sum, and the first
    bucket whose upper bound is at least ``amount`` (the last bound is +Inf), found by
    bisection. ``amount`` is a duration or a time difference, never NaN."""
    add_to_sum = series._sum.inc
    bounds = tuple(series._upper_bounds)
    buckets = tuple(bucket.inc for bucket in series._buckets)

    def observe(amount: float) -> None:
        add_to_sum(amount)
        buckets[bisect_left(bounds, amount)](1.0)

    return observe


class LoopValue:
    """One series' value in a single proxy process. The proxy updates its metrics from its
    one event-loop thread, and writes the exposition on that thread too (``/metrics`` is
    served by the same loop), so no update is ever seen halfway and none needs a lock; a
    read from another thread (a test's) sees a whole float."""

    _multiprocess = False

    __slots__ = ("_value",)

    def __init__(self, *_: Any, **__: Any) -> None:
        self._value = 0.0

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def set_exemplar(self, exemplar: object) -> None:
        """Exemplars are not kept (the proxy attaches none)."""

    def get(self) -> float:
        return self._value

    def get_exemplar(self) -> None:
        return None


def install_loop_values() -> None:
    """Make every metric created from now on in this process keep its values in
    ``LoopValue``s. For a single proxy process, before its metrics exist (a metric keeps the
    value class it was made with); a worker installs ``worker_metrics`` instead."""
    values.ValueClass = LoopValue  # type: ignore[assignment,misc]
