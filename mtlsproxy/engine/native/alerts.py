"""The exception the native engine's building blocks raise when a peer breaks the protocol.

RFC 8446 section 6.2: every fatal error is reported to the peer as one alert description.
:class:`TLSAlert` carries that description and a short human ``detail`` (never key material,
never peer bytes beyond small counts). It is deliberately independent of the handshake's
``(Step, Reason)`` vocabulary: the record layer and key exchange do not know which handshake step
they serve, so the caller converts with :meth:`TLSAlert.to_handshake_error` where it does.
"""

from __future__ import annotations

from mtlsproxy.vocabulary.failures import Alert, HandshakeError, Reason, Step


class TLSAlert(Exception):
    """A fatal protocol error: terminate the connection and send ``alert`` (RFC 8446 6.2)."""

    def __init__(self, alert: Alert, detail: str) -> None:
        super().__init__(f"{alert.name.lower()}: {detail}")
        self.alert = alert
        self.detail = detail

    def to_handshake_error(self, step: Step, reason: Reason | None = None) -> HandshakeError:
        """The engine's :class:`HandshakeError` for ``step``, keeping the alert and detail.

        ``reason`` defaults to ``INTERNAL_ERROR`` for an ``internal_error`` alert and to
        ``MALFORMED`` for everything else (a peer that sent bytes we cannot accept).
        """
        if reason is None:
            reason = (
                Reason.INTERNAL_ERROR if self.alert is Alert.INTERNAL_ERROR else Reason.MALFORMED
            )
        return HandshakeError(step, reason, self.detail, self.alert)


def decode_alert(content: bytes) -> tuple[Alert | None, str]:
    """A received alert's content (section 6: level, description) as ``(alert, name)``; an
    unknown description is ``(None, "#n")``; any length but 2 is ``decode_error``."""
    if len(content) != 2:
        raise TLSAlert(Alert.DECODE_ERROR, f"alert of {len(content)} bytes")
    description = content[1]
    try:
        alert = Alert(description)
    except ValueError:
        return None, f"#{description}"
    return alert, alert.name.lower()
