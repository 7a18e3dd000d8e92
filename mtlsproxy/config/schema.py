"""The config's JSON Schema (draft 2020-12): editors complete keys and flag typos with it.

Derived, never retyped: key names are the loader's key tuples (``load.CONFIG_KEYS``...), enum
values come from the model's enums, patterns from the loader's regexes, defaults from the
dataclasses' defaults. It describes the YAML's shape only; ``mtlsproxy check`` stays the
authority (files, duplicate names and addresses, what a route inherits, ranges a pattern
cannot say). Shipped as ``config/mtlsproxy.schema.json``; ``mtlsproxy schema`` prints it.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from mtlsproxy.config import load
from mtlsproxy.config.model import (
    DEFAULT_XFCC_FIELDS,
    FORWARDED_FIELDS,
    HEADER_FIELDS,
    XFCC_FIELDS,
    Config,
    EngineKind,
    FailedHandshakeBudget,
    ForwardIdentity,
    Http2Settings,
    IdentityForwarding,
    Limits,
    LogFormat,
    LogSettings,
    MetricsSettings,
    ReloadSettings,
    SessionTickets,
    Timeouts,
    TLSSettings,
    TLSVersion,
    UpstreamProtocol,
)
from mtlsproxy.policy.model import AllowKind, ClientAuth, ClientAuthMode
from mtlsproxy.policy.paths import RESERVED_LABELS, PathAuthorization, Requirement

Schema = dict[str, Any]

SCHEMA_FILE = "config/mtlsproxy.schema.json"  # in the repository, next to the examples
REGENERATE = f"python -m mtlsproxy schema > {SCHEMA_FILE}"

# Which forward_identity options each mode uses (the loader says "has no effect" otherwise).
HTTP_OPTIONS = ("xfcc", "headers", "forwarded", "trust_forwarded", "upstream_protocol", "http2")
PROXY_PROTOCOL_OPTIONS = ("include_certificate", "crc32c")


def json_schema() -> Schema:
    """The schema of a config file, as a JSON-ready dict."""
    listener = _section(
        load.LISTENER_KEYS,
        {
            "name": _ref("label", "The listener's name, [a-z0-9_-]{1,32}: its metrics' label."),
            "listen": _ref(
                "address",
                'host:port to accept on; IPv6 in brackets and quoted, "[::]:8443"; '
                "port 0: any free port (tests).",
            ),
            "engine": {
                "description": "The handshake engine: native (default), our TLS 1.3 server "
                "(TLS 1.2 clients go to OpenSSL), or openssl (README, Handshake engines).",
                "enum": [kind.value for kind in EngineKind],
                "default": EngineKind.NATIVE.value,
            },
            "tls": _all_of(
                "The server certificates and TLS settings.",
                _ref("tls"),
                {"required": ["certificates"]},
            ),
            "client_auth": _all_of(
                "The client-certificate policy (default: mode none).",
                _ref("client_auth"),
                _listener_client_auth(),
            ),
            "upstream": _ref("upstream", "Where decrypted bytes go: host:port or unix:/path."),
            "forward_identity": _ref(
                "forward_identity",
                "How the upstream learns who the client is: none (default), "
                "proxy_protocol_v2 or http, or the long form with mode and options.",
            ),
            "http_authorization": _ref(
                "http_authorization",
                "Per-path rules for the requests of forward_identity http (README, Per-path "
                "authorization); routes inherit them unless they set their own.",
            ),
            "routes": {
                "description": "Optional routes chosen by the client's SNI; a client without "
                "SNI or with a name no route lists gets the listener's own settings.",
                "type": "array",
                "items": _route(),
            },
            "timeouts": _section(
                load.TIMEOUT_KEYS,
                {
                    "handshake": "From accept to admitted.",
                    "connect": "To the upstream.",
                    "idle": "No byte either way, then the connection closes.",
                    "drain": "After SIGTERM, open connections finish for up to this long, "
                    "then get close_notify.",
                    "shutdown_delay": _ref(
                        "delay",
                        "After SIGTERM, keep accepting (with /readyz 503) for this long before "
                        "draining, so endpoints stop sending here first; 0: at once.",
                    ),
                    "lingering": _ref(
                        "delay",
                        "After a final answer to a refused client (alert, GOAWAY, closing "
                        "400/403), half-close and discard what it still sends for up to this "
                        "long, so its close is not a reset that loses the answer; 0: close at "
                        "once.",
                    ),
                },
                description="Durations: seconds, or 500ms, 10s, 5m, 1h.",
                item=lambda description: _ref("duration", description),
                defaults=_defaults(Timeouts),
            ),
            "limits": _section(
                load.LIMITS_KEYS,
                {
                    "max_connections": {
                        "description": "Per listener; more are closed at accept and counted.",
                        "type": "integer",
                        "minimum": 1,
                    },
                    "max_handshakes": {
                        "description": "Per listener, handshakes in flight (accepted, neither "
                        "admitted nor failed); past it the oldest is closed and counted "
                        "(handshake_shed).",
                        "type": "integer",
                        "minimum": 1,
                    },
                    "buffer_size": {
                        "description": "Bytes held per direction before the other side is "
                        "paused: a number of bytes or 256KiB, 1MiB (16KiB to 64MiB).",
                        "oneOf": [
                            {
                                "type": "integer",
                                "minimum": load._BUFFER_MIN,
                                "maximum": load._BUFFER_MAX,
                            },
                            {"type": "string", "pattern": _full(load._SIZE)},
                        ],
                    },
                    "failed_handshakes_per_source": {
                        "description": "Per source address (IPv4, IPv6 /64): handshakes that "
                        "may end without completing (abandoned, timed out, failed), a token "
                        "bucket; each completed handshake gives one back. A source with none "
                        "left has its new connections closed at accept (source_budget). "
                        "true: the defaults; false: off.",
                        "oneOf": [
                            {"type": "boolean"},
                            _section(
                                load.FAILED_HANDSHAKES_KEYS,
                                {
                                    "rate": {
                                        "description": "Tokens back per second.",
                                        "type": "number",
                                        "exclusiveMinimum": 0,
                                    },
                                    "burst": {
                                        "description": "Tokens of a source never seen.",
                                        "type": "integer",
                                        "minimum": 1,
                                    },
                                },
                                description="The bucket: rate per second, burst.",
                                defaults=_defaults(FailedHandshakeBudget),
                            ),
                        ],
                    },
                },
                description="Connection and memory limits.",
                defaults=_defaults(Limits),
            ),
        },
        description="A listening address, its TLS, client-certificate policy and upstream.",
        required=("name", "listen", "tls", "upstream"),
    )
    root = _section(
        load.CONFIG_KEYS,
        {
            "listeners": {
                "description": "One or more listeners.",
                "type": "array",
                "minItems": 1,
                "items": listener,
            },
            "metrics": _section(
                load.METRICS_KEYS,
                {
                    "listen": _ref("address", "host:port of /metrics, /healthz and /readyz."),
                    "enabled": "Serve them.",
                },
                description="The Prometheus endpoint.",
                defaults=_metrics_defaults(),
            ),
            "log": _section(
                load.LOG_KEYS,
                {
                    "format": _enum(LogFormat, "json, or text (logfmt)."),
                    "level": _enum(load.LOG_LEVELS, "The least severe level logged."),
                    "access": "One line per connection at close.",
                },
                description="Logs, on standard error.",
                defaults=_defaults(LogSettings),
            ),
            "reload": _section(
                load.RELOAD_KEYS,
                {
                    "watch": "Re-read certificate, key, CA and CRL files when their content "
                    "changes, without a restart.",
                    "interval": _ref("duration", "How often the files are checked."),
                },
                description="Certificate rotation.",
                defaults=_defaults(ReloadSettings),
            ),
            "workers": {
                "description": "Processes sharing the listening ports (SO_REUSEPORT): a number, "
                "or auto for one per CPU this process may use.",
                "oneOf": [
                    {"type": "integer", "minimum": 1, "maximum": load.MAX_WORKERS},
                    {"const": "auto"},
                ],
                "default": _defaults(Config)["workers"],
            },
        },
        description="An mtlsproxy config (README, Configuration reference).",
        required=("listeners",),
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "mtlsproxy config",
        **root,
        "$defs": _definitions(),
    }


def schema_text() -> str:
    """The shipped file's text: indent 2, sorted keys, a trailing newline."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


# --- shared definitions ---------------------------------------------------------------


def _definitions() -> dict[str, Schema]:
    return {
        "label": {
            "description": "1 to 32 of a-z 0-9 _ -.",
            "type": ["string", "integer"],  # a plain number is taken as written
            "pattern": _full(load._LABEL),
        },
        "address": {
            "description": "host:port; IPv6 in brackets.",
            "type": "string",
            "pattern": _ADDRESS,
        },
        "upstream": {
            "description": "host:port (port 1 to 65535) or unix:/path (relative to the config).",
            "type": "string",
            "anyOf": [
                {"pattern": "^unix:."},
                {"pattern": _ADDRESS, "not": {"pattern": ":0+$"}},
            ],
        },
        "duration": {
            "description": "Seconds, or a number with a unit: 500ms, 10s, 5m, 1h; above zero.",
            "oneOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {
                    "type": "string",
                    "pattern": _full(load._DURATION),
                    "not": {"pattern": r"^0+(?:\.0+)?\s*[a-z]+$"},
                },
            ],
        },
        "delay": {
            "description": "Seconds, or a number with a unit: 500ms, 10s, 5m, 1h; zero or more.",
            "oneOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": _full(load._DURATION)},
            ],
        },
        "host_pattern": {
            "description": "A host name, or *. and a name: a wildcard of exactly one label.",
            "type": "string",
            "maxLength": 255,
            "pattern": _HOST_PATTERN,
        },
        "tls": _section(
            load.TLS_KEYS,
            {
                "certificates": {
                    "description": "One or more certificate and key pairs (typically ECDSA and "
                    "RSA); the client's signature algorithms choose.",
                    "type": "array",
                    "minItems": 1,
                    "items": _section(
                        load.CERTIFICATE_KEYS,
                        {
                            "certificate": _path("PEM: the leaf first, then intermediates."),
                            "key": _path("PEM, unencrypted."),
                        },
                        description="A certificate chain and its key.",
                        required=load.CERTIFICATE_KEYS,
                    ),
                },
                "min_version": {
                    "description": 'The lowest TLS version accepted: "1.2" or "1.3" (quote it).',
                    # An unquoted 1.3 is a YAML number, taken as written.
                    "enum": [v.value for v in TLSVersion] + [float(v.value) for v in TLSVersion],
                },
                "alpn": {
                    "description": "Protocols accepted, in preference order; empty: no ALPN.",
                    "type": "array",
                    "items": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 255,
                        "pattern": r"^[\x00-\x7F]*$",
                    },
                },
                "record_padding": {
                    "description": "engine native: pad sent records to a multiple of this many "
                    "bytes (RFC 8446 section 5.4), 2 to 16384; 0: no padding.",
                    "type": "integer",
                    "anyOf": [{"const": 0}, {"minimum": 2, "maximum": 2**14}],
                },
                "session_tickets": _section(
                    load.SESSION_TICKETS_KEYS,
                    {
                        "keys": _path(
                            "A file of ticket keys shared by every replica (a Secret): one "
                            "base64 key of 32 random bytes or more per line, # comments; the "
                            "first seals new tickets, every one opens them; re-read when it "
                            "changes. Left out: keys shared by the workers, random per process."
                        ),
                        "max_age": {
                            "description": "How long after a client's certificate was verified "
                            "in a full handshake its session may still be resumed; at most 7 "
                            "days (RFC 8446 section 4.6.1). Seconds, or 30m, 24h.",
                            "oneOf": [
                                {
                                    "type": "number",
                                    "exclusiveMinimum": 0,
                                    "maximum": load.MAX_TICKET_AGE,
                                },
                                {
                                    "type": "string",
                                    "pattern": _full(load._DURATION),
                                    "not": {"pattern": r"^0+(?:\.0+)?\s*[a-z]+$"},
                                },
                            ],
                        },
                    },
                    description="engine native: TLS 1.3 session tickets; a route's settings "
                    "apply over the listener's key by key.",
                    defaults=_defaults(SessionTickets),
                ),
            },
            description="TLS settings.",
            defaults=_defaults(TLSSettings),
        ),
        "client_auth": _section(
            load.CLIENT_AUTH_KEYS,
            {
                "mode": _enum(
                    ClientAuthMode,
                    "none: one-way TLS; request: a certificate is asked for, a client without "
                    "one is admitted anonymously; require: mutual TLS.",
                ),
                "ca": _path(
                    "PEM bundle of the CAs issuing client certificates; required for "
                    "request and require."
                ),
                "crl": _path("Optional CRLs: PEM (several in one file) or DER."),
                "allow": {
                    "description": "Optional allow-list of the verified leaf's identities; any "
                    "rule admits; empty admits every verified client.",
                    "type": "array",
                    "items": _allow_rule(),
                },
                "enforce": "false: audit mode; a client the policy would refuse is admitted, "
                "counted and logged as would_refuse.",
            },
            description="The client-certificate policy.",
            defaults=_defaults(ClientAuth),
        ),
        "http_authorization": _section(
            load.HTTP_AUTHORIZATION_KEYS,
            {
                "rules": {
                    "description": "Tried in order; the first whose methods and path match "
                    "decides. Paths are compared as sent: a request whose path is not "
                    "normalized (encoded /, ., unreserved characters; //, . or .. segments; "
                    "\\ or ;) is refused with 400.",
                    "type": "array",
                    "items": _path_rule(),
                },
                "default": _enum(
                    Requirement,
                    "For a request no rule matches: any (every client), verified or deny.",
                ),
                "enforce": "false: audit mode; a request the rules would refuse is forwarded, "
                "counted (http_requests_would_refuse_total) and logged as would_refuse. A path "
                "that is not normalized is still refused with 400.",
            },
            description="Per-path authorization of HTTP requests (forward_identity http); "
            "with client_auth mode request, clients without a certificate are admitted at "
            "the handshake and these rules decide per request (403 when refused).",
            defaults=_defaults(PathAuthorization),
        ),
        "forward_identity": {
            "oneOf": [
                _enum(ForwardIdentity, "The mode alone, with its default options."),
                _section(
                    load.FORWARD_IDENTITY_KEYS,
                    {
                        "mode": _enum(ForwardIdentity, "none, proxy_protocol_v2 or http."),
                        "xfcc": {
                            "description": "http: the X-Forwarded-Client-Cert fields, in "
                            "Envoy's order; []: no XFCC.",
                            "type": "array",
                            "items": {"enum": list(XFCC_FIELDS)},
                            "default": list(DEFAULT_XFCC_FIELDS),
                        },
                        "headers": {
                            "description": "http: extra request headers, header name: field; "
                            "the same headers from the client are removed first.",
                            "type": "object",
                            "propertyNames": {"pattern": _full(load._TOKEN)},
                            "additionalProperties": {"enum": list(HEADER_FIELDS)},
                        },
                        "forwarded": {
                            "description": "http: X-Forwarded-For / X-Forwarded-Proto / "
                            "Forwarded with the client's address; the client's own copies are "
                            "removed first.",
                            "type": "array",
                            "items": {"enum": list(FORWARDED_FIELDS)},
                        },
                        "trust_forwarded": "http: keep a verified client's own X-Forwarded-For "
                        "and Forwarded lists (a trusted gateway), ours appended.",
                        "upstream_protocol": _enum(
                            UpstreamProtocol,
                            "http: http/1.1 (ALPN http/1.1 only, the default), h2c (ALPN h2 "
                            "only: every client HTTP/2, the upstream h2c with prior knowledge) "
                            "auto (ALPN h2 and http/1.1: the upstream speaks what the client "
                            "negotiated) or h2-to-http/1.1 (ALPN h2 and http/1.1, the upstream "
                            "HTTP/1.1 only: each HTTP/2 stream becomes an HTTP/1.1 request).",
                        ),
                        "http2": _http2_section(),
                        "include_certificate": "proxy_protocol_v2: add the client's leaf "
                        "certificate (DER, sub-TLV 0x28).",
                        "crc32c": "proxy_protocol_v2: add a PP2_TYPE_CRC32C checksum.",
                    },
                    description="The long form: a mode and its options.",
                    required=("mode",),
                    # mode is required in the long form: no default to show
                    defaults={**_defaults(IdentityForwarding), "mode": None},
                    rules=_forward_identity_rules(),
                ),
            ],
        },
    }


_PORT = "(?:[0-9]{1,4}|[0-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
# The loader takes any bracketed text with a colon as IPv6, and checks numbers, not digits.
_ADDRESS = rf"^(?:\[.*:.*\]|{load._HOSTNAME.pattern}):{_PORT}$"
# SNI is lowercased before it is checked, so either case is fine.
_DNS_LABEL = load._DNS_LABEL.pattern.replace("a-z", "A-Za-z")
_HOST_PATTERN = rf"^(?:\*\.)?{_DNS_LABEL}(?:\.{_DNS_LABEL})*$"
# Colons anywhere, either case: the loader removes them and lowercases.
_SHA256 = r"^:*(?:[0-9A-Fa-f]:*){64}$"


def _route() -> Schema:
    inherited = "; the listener's when left out."
    return _section(
        load.ROUTE_KEYS,
        {
            "name": _ref("label", "Optional; derived from the first sni otherwise."),
            "sni": {
                "description": "The server names this route serves: exact names and *. "
                "wildcards of one label, one or a list; each in one route only.",
                "oneOf": [
                    _ref("host_pattern"),
                    {"type": "array", "minItems": 1, "items": _ref("host_pattern")},
                ],
            },
            "tls": _ref("tls", "This route's TLS settings" + inherited),
            "client_auth": _all_of(
                "This route's policy, over the listener's key by key (a route setting only "
                "allow keeps its ca and crl); mode none drops them.",
                _ref("client_auth"),
                _mode_none_sets_nothing_else(),
            ),
            "upstream": _ref("upstream", "This route's upstream" + inherited),
            "forward_identity": _ref(
                "forward_identity", "How this route's upstream learns the client" + inherited
            ),
            "http_authorization": _ref(
                "http_authorization",
                "This route's per-path rules, replacing the listener's as a whole" + inherited,
            ),
        },
        description="A policy and upstream for some server names (SNI).",
        required=("sni",),
    )


def _path_rule() -> Schema:
    path = r"^/[^?]*$"
    return _section(
        load.PATH_RULE_KEYS,
        {
            "name": {
                "description": "Optional: the rule's label in metrics and logs (else its "
                "index); not a number, default or none.",
                "allOf": [_ref("label")],
                "not": {
                    "anyOf": [
                        {"type": "integer"},
                        {"enum": list(RESERVED_LABELS)},
                        {"pattern": "^[0-9]+$"},
                    ]
                },
            },
            "prefix": _text(
                "Paths starting with this (a string prefix: /admin matches "
                "/administrator too; /admin/ does not match /admin).",
                pattern=path,
            ),
            "exact": _text("This path exactly, without the query.", pattern=path),
            "methods": {
                "description": "Optional: only these methods, case-sensitive (GET does not "
                "imply HEAD); any method otherwise.",
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "pattern": "^[!#$%&'*+.^_`|~0-9A-Z-]+$"},
            },
            "require": _enum(
                Requirement,
                "any: every client, anonymous too; verified: a verified client certificate "
                "(on the allow list, if there is one); deny: nobody.",
            ),
            "allow": {
                "description": "With require verified: only these identities; the syntax and "
                "rules of client_auth.allow.",
                "type": "array",
                "minItems": 1,
                "items": _allow_rule(),
            },
        },
        description="One rule: prefix or exact, optional methods, what it requires.",
        required=("require",),
        rules=[
            {"oneOf": [{"required": ["prefix"]}, {"required": ["exact"]}]},
            {
                "if": {"required": ["allow"]},
                "then": {"properties": {"require": {"const": Requirement.VERIFIED.value}}},
            },
        ],
    )


def _allow_rule() -> Schema:
    patterns: dict[AllowKind, Schema] = {
        AllowKind.SPIFFE_ID: _text(
            "A SPIFFE ID: * within one path segment, a trailing /** anything below.",
            pattern="^spiffe://",
        ),
        AllowKind.URI: _text("Any URI SAN; wildcards as for spiffe_id."),
        AllowKind.DNS: _ref("host_pattern", "A DNS SAN; a leading *. matches one label."),
        AllowKind.SUBJECT_CN: {
            "description": "The subject's first commonName, exact.",
            "type": ["string", "number"],  # a plain number is taken as written
            "minLength": 1,
        },
        AllowKind.SHA256: _text(
            "The SHA-256 of the leaf certificate, hex, colons optional.", pattern=_SHA256
        ),
    }
    return {
        **_section(
            [kind.value for kind in AllowKind],
            {kind.value: patterns[kind] for kind in AllowKind},
            description="One rule: a mapping with one key, the part of the certificate matched.",
        ),
        "minProperties": 1,
        "maxProperties": 1,
    }


def _listener_client_auth() -> Schema:
    """A listener's mode is none unless it says otherwise; request and require need a CA."""
    asking = [mode.value for mode in ClientAuthMode if mode is not ClientAuthMode.NONE]
    return {
        "if": {"required": ["mode"], "properties": {"mode": {"enum": asking}}},
        "then": {"required": ["ca"]},
        "else": _forbidden(_not_mode(load.CLIENT_AUTH_KEYS)),
    }


def _mode_none_sets_nothing_else() -> Schema:
    return {
        "if": {"required": ["mode"], "properties": {"mode": {"const": ClientAuthMode.NONE.value}}},
        "then": _forbidden(_not_mode(load.CLIENT_AUTH_KEYS)),
    }


def _http2_section() -> Schema:
    count = {"type": "integer", "minimum": 1}
    return _section(
        load.HTTP2_KEYS,
        {
            "max_concurrent_streams": {
                **count,
                "maximum": load.MAX_HTTP2_STREAMS,
                "description": "SETTINGS_MAX_CONCURRENT_STREAMS to the client; one more "
                "stream is a connection error (too_many_streams).",
            },
            "max_header_list_size": {
                "type": "integer",
                "minimum": load.MIN_HEADER_LIST,
                "maximum": load.MAX_HEADER_LIST,
                "description": "SETTINGS_MAX_HEADER_LIST_SIZE, bytes decoded (RFC 9113 "
                "section 6.5.2); a larger header block is a connection error.",
            },
            "initial_window_size": {
                **count,
                "maximum": load.MAX_HTTP2_WINDOW,
                "description": "SETTINGS_INITIAL_WINDOW_SIZE, bytes per stream, at most "
                "limits.buffer_size in effect (the connection window).",
            },
            "max_resets": {
                **count,
                "description": "Client stream resets accepted within reset_interval; one "
                "more is GOAWAY ENHANCE_YOUR_CALM (rapid reset).",
            },
            "reset_interval": _ref("duration", "The window max_resets counts over."),
        },
        description="http: HTTP/2 limits per client connection.",
        defaults=_defaults(Http2Settings),
    )


def _forward_identity_rules() -> list[Schema]:
    unused = {
        ForwardIdentity.NONE: HTTP_OPTIONS + PROXY_PROTOCOL_OPTIONS,
        ForwardIdentity.HTTP: PROXY_PROTOCOL_OPTIONS,
        ForwardIdentity.PROXY_PROTOCOL_V2: HTTP_OPTIONS,
    }
    return [
        {
            "if": {"required": ["mode"], "properties": {"mode": {"const": mode.value}}},
            "then": _forbidden(unused[mode]),
        }
        for mode in ForwardIdentity
    ]


# --- building blocks ------------------------------------------------------------------


def _section(
    keys: Sequence[str],
    properties: Mapping[str, Schema | str],
    *,
    description: str,
    required: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
    item: Callable[[str], Schema] | None = None,
    rules: Sequence[Schema] = (),
) -> Schema:
    """A mapping of exactly ``keys`` (the loader's), each described in ``properties``: a
    schema, or a bare description (a boolean, or ``item(description)`` when given)."""
    if set(properties) != set(keys):
        raise ValueError(f"described {sorted(properties)}, the loader accepts {sorted(keys)}")
    defaults = defaults or {}
    described: dict[str, Schema] = {}
    for key in keys:
        value = properties[key]
        if isinstance(value, str):
            value = item(value) if item else {"description": value, "type": "boolean"}
        if defaults.get(key) is not None:
            value = {**value, "default": defaults[key]}
        described[key] = value
    schema: Schema = {
        "description": description,
        "type": "object",
        "properties": described,
        "additionalProperties": False,
    }
    if required := list(required):
        schema["required"] = required
    if rules:
        schema["allOf"] = list(rules)
    return schema


def _metrics_defaults() -> dict[str, Any]:
    defaults = _defaults(MetricsSettings)
    return {"listen": f"{defaults.pop('host')}:{defaults.pop('port')}", **defaults}


def _defaults(cls: type) -> dict[str, Any]:
    """The dataclass's defaults as JSON values, by field name (the YAML key, mostly)."""
    values = {
        f.name: f.default
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING and f.default is not None
    }
    if "xfcc_fields" in values:
        values["xfcc"] = values.pop("xfcc_fields")
    return {name: _json(value) for name, value in values.items() if _json(value) != []}


def _json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return _json(value.value)
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    return value


def _ref(name: str, description: str | None = None) -> Schema:
    ref: Schema = {"$ref": f"#/$defs/{name}"}
    return {**ref, "description": description} if description else ref


def _all_of(description: str, *schemas: Schema) -> Schema:
    return {"description": description, "allOf": list(schemas)}


def _enum(values: Iterable[str], description: str) -> Schema:
    return {"description": description, "enum": [str(v) for v in values]}


def _text(description: str, pattern: str | None = None) -> Schema:
    schema: Schema = {"description": description, "type": "string", "minLength": 1}
    return {**schema, "pattern": pattern} if pattern else schema


def _path(description: str) -> Schema:
    return _text(f"{description} Relative to the config file's directory.")


def _not_mode(keys: Sequence[str]) -> list[str]:
    return [key for key in keys if key != "mode"]


def _forbidden(keys: Iterable[str]) -> Schema:
    return {"properties": dict.fromkeys(keys, False)}


def _full(regex: re.Pattern[str]) -> str:
    """A loader regex, which it applies with ``fullmatch``, anchored for JSON Schema."""
    return f"^(?:{regex.pattern})$"
