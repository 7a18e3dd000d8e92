"""What OpenSSL's handshake errors mean: the one place they become (step, reason, alert).

The OpenSSL engine (:mod:`mtlsproxy.engine.openssl`) sees a failed handshake as an
``ssl.SSLError`` whose ``reason`` is OpenSSL's reason code (``NO_SHARED_CIPHER``,
``TLSV1_ALERT_UNKNOWN_CA``, ...) or, for a certificate, a ``verify_code`` (``X509_V_ERR_*``).
:func:`classify` names it in the vocabulary both engines report in.
"""

from __future__ import annotations

import ssl

from mtlsproxy.engine.progress import peer_alert_error, peer_closed
from mtlsproxy.vocabulary.failures import Alert, HandshakeError, Reason, Step

# X509_V_ERR_* codes (openssl/x509_vfy.h) -> reason, and the alert OpenSSL sends for them
# (ssl_verify_alarm_type in ssl/statem/statem_lib.c).
_VERIFY_CODES: dict[int, tuple[Reason, Alert]] = {
    9: (Reason.CLIENT_CERT_NOT_YET_VALID, Alert.BAD_CERTIFICATE),
    10: (Reason.CLIENT_CERT_EXPIRED, Alert.CERTIFICATE_EXPIRED),
    23: (Reason.CLIENT_CERT_REVOKED, Alert.CERTIFICATE_REVOKED),
    26: (Reason.CLIENT_CERT_BAD_USAGE, Alert.UNSUPPORTED_CERTIFICATE),
    2: (Reason.CLIENT_CERT_UNTRUSTED, Alert.UNKNOWN_CA),
    3: (Reason.CLIENT_CERT_UNTRUSTED, Alert.UNKNOWN_CA),  # no CRL for the issuer: fail closed
    12: (Reason.CLIENT_CERT_UNTRUSTED, Alert.UNKNOWN_CA),  # the CRL itself has expired
    18: (Reason.CLIENT_CERT_UNTRUSTED, Alert.UNKNOWN_CA),
    19: (Reason.CLIENT_CERT_UNTRUSTED, Alert.UNKNOWN_CA),
    20: (Reason.CLIENT_CERT_UNTRUSTED, Alert.UNKNOWN_CA),
    21: (Reason.CLIENT_CERT_UNTRUSTED, Alert.UNKNOWN_CA),
}

# OpenSSL reason codes for our own handshake failures, by what they mean to an operator.
_NEGOTIATION_FAILURES: dict[str, Reason] = {
    "NO_SHARED_CIPHER": Reason.NO_SHARED_CIPHER,
    "NO_SHARED_GROUPS": Reason.NO_SHARED_CIPHER,
    "NO_SUITABLE_KEY_SHARE": Reason.NO_SHARED_CIPHER,
    "NO_SHARED_SIGNATURE_ALGORITHMS": Reason.NO_SHARED_SIGNATURE,
    "NO_SUITABLE_SIGNATURE_ALGORITHM": Reason.NO_SHARED_SIGNATURE,
    "UNSUPPORTED_PROTOCOL": Reason.UNSUPPORTED_VERSION,
    "VERSION_TOO_LOW": Reason.UNSUPPORTED_VERSION,
    "WRONG_VERSION_NUMBER": Reason.UNSUPPORTED_VERSION,
}


def classify(
    exc: ssl.SSLError, waiting_step: Step, *, tls13: bool, flight_sent: bool
) -> HandshakeError:
    """One OpenSSL handshake error as (step, reason, alert). ``waiting_step``: what the
    handshake waited for; ``tls13``: the version (for the missing-certificate alert);
    ``flight_sent``: our flight was written (a peer alert before it is about our hello)."""
    reason_code = exc.reason or ""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason, alert = _VERIFY_CODES.get(
            exc.verify_code, (Reason.CLIENT_CERT_INVALID, Alert.BAD_CERTIFICATE)
        )
        return HandshakeError(
            Step.CLIENT_VERIFY, reason, f"client certificate: {exc.verify_message}", alert
        )
    if isinstance(exc, ssl.SSLZeroReturnError | ssl.SSLEOFError | ssl.SSLSyscallError):
        return peer_closed(waiting_step)
    if reason_code == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        alert = Alert.CERTIFICATE_REQUIRED if tls13 else Alert.HANDSHAKE_FAILURE
        return HandshakeError(
            Step.CLIENT_CERTIFICATE,
            Reason.CLIENT_CERT_MISSING,
            "the client sent no certificate and client_auth.mode is require",
            alert,
        )
    received = received_alert(reason_code)
    if received is not None:
        return peer_alert_error(
            received,
            received.name.lower(),
            waiting_step,
            flight_sent=flight_sent,
        )
    if reason_code in _NEGOTIATION_FAILURES:
        reason = _NEGOTIATION_FAILURES[reason_code]
        alert = (
            Alert.PROTOCOL_VERSION
            if reason is Reason.UNSUPPORTED_VERSION
            else Alert.HANDSHAKE_FAILURE
        )
        return HandshakeError(Step.SERVER_HELLO, reason, f"OpenSSL: {reason_code}", alert)
    if reason_code in ("BAD_SIGNATURE", "BAD_RSA_SIGNATURE", "BAD_ECDSA_SIGNATURE"):
        return HandshakeError(
            Step.CLIENT_VERIFY,
            Reason.CLIENT_CERT_INVALID,
            "the client's CertificateVerify signature does not verify",
            Alert.DECRYPT_ERROR,
        )
    if reason_code == "DIGEST_CHECK_FAILED":
        return HandshakeError(
            Step.CLIENT_FINISHED,
            Reason.MALFORMED,
            "the client's Finished does not match",
            Alert.DECRYPT_ERROR,
        )
    return HandshakeError(waiting_step, Reason.MALFORMED, f"OpenSSL: {reason_code or exc}")


def received_alert(reason_code: str) -> Alert | None:
    """OpenSSL names a received alert SSLV3_ALERT_X, TLSV1_ALERT_X or TLSV13_ALERT_X."""
    for prefix in ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_"):
        if reason_code.startswith(prefix):
            name = reason_code.removeprefix(prefix)
            return Alert.__members__.get(name, Alert.HANDSHAKE_FAILURE)
    return None
