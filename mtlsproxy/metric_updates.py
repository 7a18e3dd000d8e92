"""A labelled series' update at the cost of the addition itself.

prometheus-client's ``Counter.inc``, ``Gauge.inc`` and ``Histogram.observe`` check on every
call that the metric is a labelled child and the amount allowed, then walk a histogram's
buckets in Python: three or four Python calls around each addition, and a dozen updates per
connection. The series the proxy updates per connection are children looked up once
(``Metrics``, ``ListenerRuntime``), so the checks hold by construction; these functions return
the updates of such a child as its value objects' own ``inc`` (prometheus-client's
``MutexValue``, or ``worker_metrics.WorkerValue`` with workers), so the values, the files and
the exposition are the ones the public methods make (``tests/test_metric_updates.py``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

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
