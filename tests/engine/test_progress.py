"""The phase marks and words both engines share, on a fake clock."""

from __future__ import annotations

import dataclasses

import pytest

from mtlsproxy.engine.native import states
from mtlsproxy.engine.native.states import TRANSITIONS, Closed, Established, Negotiating, State
from mtlsproxy.engine.progress import PhaseMarks, peer_alert_error
from mtlsproxy.vocabulary.failures import Alert, Reason, Step
from tests.engine.native.harness import FakeClock


def test_marks_time_every_phase_from_the_accept() -> None:
    marks = PhaseMarks(FakeClock())  # accept at 0 ms; every reading adds 1 ms
    assert marks.waiting_step(Step.CLIENT_FINISHED) is Step.CLIENT_HELLO
    marks.mark_hello()
    assert marks.waiting_step(Step.CLIENT_FINISHED) is Step.SERVER_HELLO
    marks.mark_flight()
    assert marks.waiting_step(Step.CLIENT_FINISHED) is Step.CLIENT_FINISHED
    marks.begin_work()  # 3 ms: the answer
    marks.end_work()  # 4 ms: still waiting, 1 ms of work
    marks.begin_work()  # 5 ms
    marks.mark_end()  # 6 ms: 1 more ms of work
    timings = marks.timings()
    assert timings.as_dict() == pytest.approx(
        {"client_hello": 0.001, "server_flight": 0.001, "client_flight": 0.001,
         "verify": 0.002, "total": 0.006}
    )  # fmt: skip


def test_marks_of_the_call_that_completed_only() -> None:
    """OpenSSL's view: the work is the one call that completed the handshake."""
    marks = PhaseMarks(FakeClock())
    marks.mark_hello()
    marks.mark_flight()
    marks.mark_answer()
    marks.mark_answer()  # only the first answer counts
    marks.mark_end(work_since=marks.clock())
    assert marks.timings().verify == pytest.approx(0.001)
    assert marks.answer == pytest.approx(0.003)


def test_peer_alerts_are_classified_once() -> None:
    rejected = peer_alert_error(
        Alert.UNKNOWN_CA, "unknown_ca", Step.CLIENT_FINISHED, flight_sent=True
    )
    assert (rejected.step, rejected.reason) == (
        Step.SERVER_CERTIFICATE,
        Reason.CLIENT_REJECTED_SERVER_CERT,
    )
    early = peer_alert_error(Alert.UNKNOWN_CA, "unknown_ca", Step.SERVER_HELLO, flight_sent=False)
    assert (early.step, early.reason) == (Step.SERVER_HELLO, Reason.CLIENT_ALERT)
    version = peer_alert_error(Alert.PROTOCOL_VERSION, "protocol_version", Step.SERVER_HELLO,
                               flight_sent=False)  # fmt: skip
    assert version.reason is Reason.UNSUPPORTED_VERSION
    closed = peer_alert_error(
        Alert.CLOSE_NOTIFY, "close_notify", Step.CLIENT_VERIFY, flight_sent=True
    )
    assert (closed.step, closed.reason) == (Step.CLIENT_VERIFY, Reason.PEER_CLOSED)
    unknown = peer_alert_error(None, "#200", Step.CLIENT_FINISHED, flight_sent=True)
    assert unknown.detail == "the client sent alert #200"


def test_every_state_has_its_transitions_and_a_step() -> None:
    def subclasses(cls: type[State]) -> set[type[State]]:
        found = set()
        for sub in cls.__subclasses__():
            found |= {sub} | subclasses(sub)
        return found

    # The classes the module names: a slotted dataclass replaces its class (the first one may
    # linger as a subclass), and quick_init's building twins are subclasses too.
    concrete = {
        cls.__name__
        for cls in subclasses(State)
        if dataclasses.is_dataclass(cls) and getattr(states, cls.__name__, None) is cls
    }
    assert concrete == {cls.__name__ for cls in TRANSITIONS}
    assert Negotiating.step is Step.SERVER_HELLO
    assert Established.step is None and Closed.step is None
