"""A worker's metric values, written by ``worker_metrics.WorkerValue`` (through the public
methods and ``metric_updates``), read back by prometheus-client's own multiprocess collector as
the supervisor reads them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess

# A worker: installs the value class, then makes and updates metrics as the proxy does.
WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from mtlsproxy import worker_metrics
    worker_metrics.install(Path(sys.argv[1]))
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from mtlsproxy.metric_updates import adder, observer
    registry = CollectorRegistry()
    requests = Counter("t_requests", "r", ["route"], registry=registry)
    open_now = Gauge("t_open", "o", multiprocess_mode="livesum", registry=registry)
    expiry = Gauge("t_expiry", "e", multiprocess_mode="max", registry=registry)
    latency = Histogram("t_seconds", "s", buckets=(0.1, 1.0), registry=registry)
    requests.labels("a").inc()
    requests.labels("a").inc(2)
    adder(requests.labels("b"))(1.0)  # as the proxy's per-connection series
    open_now.inc(3)
    adder(open_now)(-1.0)
    expiry.set(float(sys.argv[2]))
    latency.observe(0.05)
    observer(latency)(0.5)
    print(requests.labels("a")._value.get(), flush=True)
    """
)


def run_worker(directory: Path, expiry: int) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(directory), str(expiry)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.returncode, done.stdout.strip()


def collected(directory: Path) -> dict[str, float]:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return {
        sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def test_two_workers_values_sum_as_prometheus_client_reads_them(tmp_path: Path) -> None:
    assert run_worker(tmp_path, 100) == (0, "3.0")
    assert run_worker(tmp_path, 200) == (0, "3.0")
    values = collected(tmp_path)
    assert values['t_requests_total{"route": "a"}'] == 6
    assert values['t_requests_total{"route": "b"}'] == 2
    assert values["t_open{}"] == 4  # livesum: both "workers" still count as alive here
    assert values["t_expiry{}"] == 200  # max
    assert values['t_seconds_bucket{"le": "0.1"}'] == 2
    assert values['t_seconds_bucket{"le": "1.0"}'] == 4
    assert values['t_seconds_bucket{"le": "+Inf"}'] == 4
    assert values["t_seconds_count{}"] == 4
    assert abs(values["t_seconds_sum{}"] - 1.1) < 1e-9


def test_a_dead_workers_live_gauges_are_dropped_and_its_counters_kept(tmp_path: Path) -> None:
    run_worker(tmp_path, 100)
    (pid,) = {name.rsplit("_", 1)[1].split(".")[0] for name in (p.name for p in tmp_path.iterdir())}
    multiprocess.mark_process_dead(int(pid), str(tmp_path))
    values = collected(tmp_path)
    assert "t_open{}" not in values
    assert values['t_requests_total{"route": "a"}'] == 3


# A series made first, then enough others that the worker's file outgrows its first size
# (prometheus-client: 1 MiB, doubled and mapped again): the first series' later updates land
# at its entry, which ``WorkerValue`` found once, before the growth.
GROWING = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from mtlsproxy import worker_metrics
    worker_metrics.install(Path(sys.argv[1]))
    from prometheus_client import CollectorRegistry, Counter
    from mtlsproxy.metric_updates import adder
    registry = CollectorRegistry()
    requests = Counter("t_requests", "r", ["route"], registry=registry)
    first = adder(requests.labels("first"))
    first(1.0)
    for n in range(12_000):
        requests.labels(f"route-{n:05}-" + "x" * 40).inc()
    first(2.0)
    """
)


def test_updates_after_the_file_grew_land_at_their_entry(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", GROWING, str(tmp_path)], check=True, timeout=120)
    (file,) = tmp_path.iterdir()
    assert file.stat().st_size > 1024 * 1024  # it did grow
    values = collected(tmp_path)
    assert values['t_requests_total{"route": "first"}'] == 3
    assert values['t_requests_total{"route": "route-11999-' + "x" * 40 + '"}'] == 1
    assert sum(v for k, v in values.items() if k.startswith("t_requests_total")) == 12_003
