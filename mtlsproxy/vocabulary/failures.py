"""The failure vocabulary: seed steps, reasons, TLS alerts, and the refusal they make up.

Every handshake that does not end in forwarded application data is described by one
``(step, reason)`` pair. The step is the numbered handshake step of docs/handshake.md; the
reason is a short, bounded label that becomes a metric label and a log field. Both are enums so
that label values can never grow with what a peer sends.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Step(enum.StrEnum):
    """The seed step at which a handshake stopped (docs/handshake.md)."""

    CLIENT_HELLO = "client_hello"  # seed 1
    SERVER_HELLO = "server_hello"  # seed 2
    SERVER_CERTIFICATE = "server_certificate"  # seed 3: the client rejected our certificate
    KEY_EXCHANGE = "key_exchange"  # seed 4
    CLIENT_CERTIFICATE = "client_certificate"  # seed 5
    CLIENT_VERIFY = "client_verify"  # seed 6: chain, validity, usage, revocation
    AUTHORIZE = "authorize"  # seed 6: identity allow-list
    CLIENT_FINISHED = "client_finished"  # seed 7
    SERVER_FINISHED = "server_finished"  # seed 8


class Reason(enum.StrEnum):
    """Why a handshake failed or was refused; a bounded metric label."""

    CLIENT_CERT_MISSING = "client_cert_missing"
    CLIENT_CERT_UNTRUSTED = "client_cert_untrusted"
    CLIENT_CERT_EXPIRED = "client_cert_expired"
    CLIENT_CERT_NOT_YET_VALID = "client_cert_not_yet_valid"
    CLIENT_CERT_REVOKED = "client_cert_revoked"
    CLIENT_CERT_BAD_USAGE = "client_cert_bad_usage"
    CLIENT_CERT_INVALID = "client_cert_invalid"  # bad signature, unparsable, other chain errors
    IDENTITY_NOT_ALLOWED = "identity_not_allowed"
    CLIENT_REJECTED_SERVER_CERT = "client_rejected_server_cert"
    UNSUPPORTED_VERSION = "unsupported_version"
    NO_SHARED_CIPHER = "no_shared_cipher"
    NO_SHARED_SIGNATURE = "no_shared_signature"
    NOT_TLS = "not_tls"
    MALFORMED = "malformed"
    CLIENT_ALERT = "client_alert"  # the client aborted with an alert we do not classify further
    TIMEOUT = "timeout"
    PEER_CLOSED = "peer_closed"
    INTERNAL_ERROR = "internal_error"


class Alert(enum.IntEnum):
    """TLS alert descriptions (RFC 8446 section 6, RFC 5246 section 7.2)."""

    CLOSE_NOTIFY = 0
    UNEXPECTED_MESSAGE = 10
    BAD_RECORD_MAC = 20
    RECORD_OVERFLOW = 22
    HANDSHAKE_FAILURE = 40
    BAD_CERTIFICATE = 42
    UNSUPPORTED_CERTIFICATE = 43
    CERTIFICATE_REVOKED = 44
    CERTIFICATE_EXPIRED = 45
    CERTIFICATE_UNKNOWN = 46
    ILLEGAL_PARAMETER = 47
    UNKNOWN_CA = 48
    ACCESS_DENIED = 49
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    PROTOCOL_VERSION = 70
    INSUFFICIENT_SECURITY = 71
    INTERNAL_ERROR = 80
    INAPPROPRIATE_FALLBACK = 86
    USER_CANCELED = 90
    MISSING_EXTENSION = 109
    UNSUPPORTED_EXTENSION = 110
    UNRECOGNIZED_NAME = 112
    BAD_CERTIFICATE_STATUS_RESPONSE = 113
    UNKNOWN_PSK_IDENTITY = 115
    CERTIFICATE_REQUIRED = 116
    NO_APPLICATION_PROTOCOL = 120


class HandshakeError(Exception):
    """A handshake cannot continue. Raised inside the engine, reported as ``HandshakeFailed``.

    ``alert`` is the alert we send (or sent), if any; ``detail`` is a human sentence for the log
    line, never containing secrets.
    """

    def __init__(self, step: Step, reason: Reason, detail: str, alert: Alert | None = None) -> None:
        super().__init__(f"{step}: {reason}: {detail}")
        self.step = step
        self.reason = reason
        self.detail = detail
        self.alert = alert


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the policy refuses a client: the seed step, the reason, a sentence, and the alert
    that reports it (None where the engine cannot send one)."""

    step: Step
    reason: Reason
    detail: str
    alert: Alert | None = None

    def to_error(self) -> HandshakeError:
        return HandshakeError(self.step, self.reason, self.detail, self.alert)
