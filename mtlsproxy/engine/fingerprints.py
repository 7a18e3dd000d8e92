"""TLS client fingerprints of a parsed ClientHello: FoxIO JA4 and Salesforce JA3.

Both skip GREASE values (RFC 8701). They are computed on demand (a JA4 costs two SHA-256 and
a sort): the handshake log line and the trace ask for them, nothing on the handshake path does.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Final

from mtlsproxy.engine.hello_extensions import ExtensionType, is_grease

if TYPE_CHECKING:
    from mtlsproxy.engine.clienthello import ClientHello

# JA4 version codes (FoxIO JA4 specification, "TLS and DTLS Version").
_JA4_VERSIONS: Final = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}


def _sha256_12(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]


def _is_ascii_alnum(byte: int) -> bool:
    return 0x30 <= byte <= 0x39 or 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A


def ja4(hello: ClientHello) -> str:
    """The FoxIO JA4 TLS client fingerprint, e.g. ``t13d1516h2_8daaf6152771_e5627efa2ab1``.

    ``t`` (TCP TLS), version (highest of supported_versions, else legacy_version), ``d`` if
    the SNI extension is present else ``i``, 2-digit cipher and extension counts (capped at
    99), first and last characters of the first ALPN value (``00`` if none; the hex digits'
    first and last when either end is not ASCII alphanumeric); then the truncated SHA-256 of
    the sorted cipher list; then of the sorted extension list without SNI and ALPN, joined by
    ``_`` to the signature algorithms in wire order. GREASE is ignored everywhere.
    """
    ciphers = [c for c in hello.cipher_suites if not is_grease(c)]
    ext_types = [t for t in hello.extension_types if not is_grease(t)]
    version = _JA4_VERSIONS.get(hello.max_version, "00")
    sni = "d" if ExtensionType.SERVER_NAME in ext_types else "i"
    alpn = "00"
    if hello.alpn_protocols:
        first = hello.alpn_protocols[0].encode("latin-1")
        if first and _is_ascii_alnum(first[0]) and _is_ascii_alnum(first[-1]):
            alpn = chr(first[0]) + chr(first[-1])
        elif first:
            alpn = f"{first[0]:02x}"[0] + f"{first[-1]:02x}"[-1]
    part_a = f"t{version}{sni}{min(len(ciphers), 99):02d}{min(len(ext_types), 99):02d}{alpn}"

    part_b = _sha256_12(",".join(sorted(f"{c:04x}" for c in ciphers))) if ciphers else "0" * 12
    hashed_exts = sorted(
        f"{t:04x}" for t in ext_types if t not in (ExtensionType.SERVER_NAME, ExtensionType.ALPN)
    )
    sigalgs = [f"{s:04x}" for s in hello.signature_algorithms if not is_grease(s)]
    if hashed_exts:
        text = ",".join(hashed_exts)
        if sigalgs:
            text += "_" + ",".join(sigalgs)
        part_c = _sha256_12(text)
    else:
        part_c = "0" * 12
    return f"{part_a}_{part_b}_{part_c}"


def ja3_string(hello: ClientHello) -> str:
    """The classic JA3 string: version,ciphers,extensions,groups,point formats (no GREASE)."""

    def dashed(values: tuple[int, ...] | bytes) -> str:
        return "-".join(str(v) for v in values if not is_grease(v))

    return ",".join(
        (
            str(hello.legacy_version),
            dashed(hello.cipher_suites),
            dashed(hello.extension_types),
            dashed(hello.supported_groups),
            dashed(hello.ec_point_formats),
        )
    )


def ja3(hello: ClientHello) -> str:
    """MD5 hex of ``ja3_string()`` (Salesforce JA3)."""
    return hashlib.md5(ja3_string(hello).encode("ascii"), usedforsecurity=False).hexdigest()
