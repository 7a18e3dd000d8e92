"""The per-source budget of handshakes that do not complete (``proxy.source_budget``), with
the clock passed in: refill, burst, debt, completions, the table's bound, IPv6 /64 grouping
and the rate of its reports."""

from __future__ import annotations

import pytest

from mtlsproxy.proxy.source_budget import (
    MAX_REPORTS_PER_INTERVAL,
    REPORT_INTERVAL,
    SourceBudget,
    source_of,
)

A, B = "192.0.2.1", "192.0.2.2"


def exhaust(budget: SourceBudget, source: str, now: float) -> None:
    """Fail handshakes from ``source`` until it is refused."""
    for _ in range(int(budget.burst)):
        assert budget.admit(source, now) is None
        budget.charge(source, now)
    assert budget.admit(source, now) is not None


def test_a_source_never_seen_has_a_full_bucket_and_no_entry() -> None:
    budget = SourceBudget(rate=2, burst=5)
    assert budget.admit(A, 0.0) is None
    assert budget.tokens(A, 0.0) == 5
    assert len(budget) == 0


def test_burst_failures_then_refused_until_a_token_refills() -> None:
    budget = SourceBudget(rate=2, burst=5)
    exhaust(budget, A, now=100.0)
    assert budget.tokens(A, 100.0) == 0
    assert budget.admit(A, 100.49) is not None  # 0.98 of a token
    assert budget.admit(A, 100.5) is None  # one whole token at 2 a second
    budget.charge(A, 100.5)
    assert budget.admit(A, 100.5) is not None
    # Other sources are untouched.
    assert budget.admit(B, 100.5) is None


def test_refill_stops_at_burst_and_a_full_bucket_leaves_the_table() -> None:
    budget = SourceBudget(rate=2, burst=5)
    budget.charge(A, 0.0)
    assert len(budget) == 1
    assert budget.tokens(A, 1000.0) == 5  # not more than burst however long it waited
    assert budget.admit(A, 1000.0) is None
    assert len(budget) == 0


def test_refusals_take_no_tokens() -> None:
    """Only a handshake that ends without completing pays: a refused connection had none."""
    budget = SourceBudget(rate=1, burst=3)
    exhaust(budget, A, now=0.0)
    for _ in range(100):
        assert budget.admit(A, 0.5) is not None
    assert budget.tokens(A, 0.5) == pytest.approx(0.5)
    assert budget.admit(A, 1.0) is None


def test_handshakes_begun_at_once_and_abandoned_are_paid_back_down_to_minus_burst() -> None:
    """Admission takes nothing, so many handshakes may start together; their failures are a
    debt paid back before the next one, never more than ``burst`` of it."""
    budget = SourceBudget(rate=1, burst=4)
    for _ in range(4):
        budget.charge(A, 0.0)
    assert budget.tokens(A, 0.0) == 0
    for _ in range(3):
        budget.charge(A, 0.0)
    assert budget.tokens(A, 0.0) == -3
    for _ in range(50):
        budget.charge(A, 0.0)
    assert budget.tokens(A, 0.0) == -4
    assert budget.admit(A, 4.9) is not None
    assert budget.admit(A, 5.0) is None  # 2 * burst / rate after the last failure


def test_completed_handshakes_are_not_charged_and_give_a_token_back() -> None:
    budget = SourceBudget(rate=1, burst=3)
    for _ in range(1000):
        budget.complete(A, 0.0)
    assert len(budget) == 0
    assert budget.tokens(A, 0.0) == 3
    exhaust(budget, A, now=10.0)
    budget.complete(A, 10.0)
    assert budget.admit(A, 10.0) is None  # the completion paid for one more failure
    budget.charge(A, 10.0)
    assert budget.admit(A, 10.0) is not None
    # Back to full by completions alone: the source leaves the table.
    for _ in range(3):
        budget.complete(A, 10.0)
    assert len(budget) == 0


def test_a_source_that_completes_more_than_it_fails_is_never_refused() -> None:
    """A NAT gateway of well-behaved clients: 50 handshakes a second, 1 in 5 failing, far
    past ``burst`` failures over a minute, never refused."""
    budget = SourceBudget(rate=0.1, burst=2)
    now = 0.0
    for step in range(3000):
        now = step * 0.02
        assert budget.admit(A, now) is None, now
        if step % 5 == 0:
            budget.charge(A, now)
        else:
            budget.complete(A, now)


def test_the_table_is_bounded_and_forgets_the_least_recently_seen() -> None:
    budget = SourceBudget(rate=1, burst=2, capacity=3)
    for source in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        budget.charge(source, 0.0)
        budget.charge(source, 0.0)
    assert budget.admit("10.0.0.1", 0.0) is not None  # seen again: now the most recent
    budget.charge("10.0.0.4", 0.0)
    assert len(budget) == 3
    assert budget.tokens("10.0.0.2", 0.0) == 2  # forgotten: a full bucket again
    for kept in ("10.0.0.1", "10.0.0.3"):
        assert budget.admit(kept, 0.0) is not None
    for number in range(5, 1000):
        budget.charge(f"10.0.{number // 256}.{number % 256}", 0.0)
    assert len(budget) == 3


def test_ipv6_sources_are_grouped_by_64() -> None:
    assert source_of("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert source_of("fe80::1%eth0") == "fe80::/64"
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"  # a dual-stack socket's IPv4 client
    assert source_of("192.0.2.7") == "192.0.2.7"
    budget = SourceBudget(rate=1, burst=2)
    exhaust(budget, source_of("2001:db8:1:2::1"), now=0.0)
    assert budget.admit(source_of("2001:db8:1:2:dead:beef:0:7"), 0.0) is not None
    assert budget.admit(source_of("2001:db8:1:3::1"), 0.0) is None


def test_refusals_are_reported_once_per_source_per_interval() -> None:
    budget = SourceBudget(rate=0.001, burst=1)
    exhaust(budget, A, now=0.0)
    refusal = budget.admit(A, 0.0)
    assert refusal is not None and refusal.source == A and refusal.report == 0  # just reported
    reports = []
    for tick in range(1, 300):  # 0.1 s apart, 30 s
        refusal = budget.admit(A, tick * 0.1)
        assert refusal is not None
        reports.append(refusal.report)
    # At 10 s and 20 s, each with the refusals since the last line (the one at 0 s included).
    assert [r for r in reports if r] == [101, 100]


def test_reports_are_capped_across_sources() -> None:
    """A distributed attack does not become a line per source per interval: at most
    ``MAX_REPORTS_PER_INTERVAL`` sources each interval, the others reported later."""
    budget = SourceBudget(rate=0.0001, burst=1)
    sources = [f"198.51.100.{n}" for n in range(MAX_REPORTS_PER_INTERVAL * 2)]
    for source in sources:
        budget.charge(source, 0.0)
    first = [budget.admit(source, 0.0) for source in sources]
    assert sum(1 for r in first if r and r.report) == MAX_REPORTS_PER_INTERVAL
    assert [r.report for r in first[:MAX_REPORTS_PER_INTERVAL] if r] == [1] * 16
    # The next interval: those not reported yet, with everything they were refused since.
    later = [budget.admit(source, REPORT_INTERVAL) for source in sources[16:]]
    assert [r.report for r in later if r] == [2] * 16


def test_new_settings_keep_the_debts() -> None:
    budget = SourceBudget(rate=1, burst=10)
    exhaust(budget, A, now=0.0)
    budget.configure(rate=100, burst=2)
    assert budget.admit(A, 0.0) is not None
    assert budget.admit(A, 0.01) is None
    assert budget.tokens(B, 0.0) == 2


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        SourceBudget(rate=0, burst=1)
    with pytest.raises(ValueError):
        SourceBudget(rate=1, burst=0)
