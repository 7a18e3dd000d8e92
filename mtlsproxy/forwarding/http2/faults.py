"""Why an HTTP/2 connection was ended: one bounded label per kind, for the metric and the log.

Every ``h2`` error that ends a connection is a ``ProtocolError`` subclass carrying the error
code of the GOAWAY it answered with (RFC 9113 section 5.4.1); ``classify`` turns it into a
``Http2Fault`` once, here. The labels are those of
``mtlsproxy_http2_connection_errors_total{reason}``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from h2.exceptions import (
    DenialOfServiceError,
    FlowControlError,
    FrameTooLargeError,
    InvalidBodyLengthError,
    ProtocolError,
    TooManyStreamsError,
)

from mtlsproxy.forwarding.http2.frames import HeaderBlockTooLarge


class Side(enum.StrEnum):
    CLIENT = "client"
    UPSTREAM = "upstream"


class FaultReason(enum.StrEnum):
    RAPID_RESET = "rapid_reset"  # CVE-2023-44487: streams opened and reset past max_resets
    HEADER_BLOCK_TOO_LARGE = "header_block_too_large"  # CONTINUATION flood (CVE-2024-27316)
    HEADER_LIST_TOO_LARGE = "header_list_too_large"  # decoded past max_header_list_size
    FRAME_TOO_LARGE = "frame_too_large"  # past SETTINGS_MAX_FRAME_SIZE (section 4.2)
    TOO_MANY_STREAMS = "too_many_streams"  # past SETTINGS_MAX_CONCURRENT_STREAMS (5.1.2)
    FLOW_CONTROL = "flow_control"  # sent past the window it was given (section 6.9)
    CONTENT_LENGTH = "content_length"  # DATA disagreeing with content-length (8.1.1)
    MALFORMED_HEADERS = "malformed_headers"  # pseudo-headers, connection-specific fields (8.2)
    BAD_PREFACE = "bad_preface"  # not the HTTP/2 connection preface (section 3.4)
    PROTOCOL_ERROR = "protocol_error"  # any other connection error
    PEER_GOAWAY = "peer_goaway"  # the peer ended the connection with an error code


@dataclass(frozen=True, slots=True)
class Http2Fault:
    """One connection error: who made it, why (a bounded label) and what ``h2`` said."""

    side: Side
    reason: FaultReason
    detail: str
    error_code: int


def classify(side: Side, error: ProtocolError) -> Http2Fault:
    code = int(getattr(error, "error_code", 1))
    return Http2Fault(side, _reason(error), str(error)[:200], code)


def _reason(error: ProtocolError) -> FaultReason:
    if isinstance(error, HeaderBlockTooLarge):
        return FaultReason.HEADER_BLOCK_TOO_LARGE
    if isinstance(error, DenialOfServiceError):
        return FaultReason.HEADER_LIST_TOO_LARGE
    for kind, reason in _KINDS:
        if isinstance(error, kind):
            return reason
    text = str(error).lower()
    if "continuation" in text:
        return FaultReason.HEADER_BLOCK_TOO_LARGE
    if "preamble" in text:
        return FaultReason.BAD_PREFACE
    if "header" in text:
        return FaultReason.MALFORMED_HEADERS
    return FaultReason.PROTOCOL_ERROR


_KINDS: tuple[tuple[type[ProtocolError], FaultReason], ...] = (
    (FrameTooLargeError, FaultReason.FRAME_TOO_LARGE),
    (TooManyStreamsError, FaultReason.TOO_MANY_STREAMS),
    (FlowControlError, FaultReason.FLOW_CONTROL),
    (InvalidBodyLengthError, FaultReason.CONTENT_LENGTH),
)
