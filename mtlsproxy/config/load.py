"""YAML -> typed ``Config``, validated once, with every problem named by file, line and key path.

The YAML is composed, not constructed: PyYAML's nodes keep their marks, so each value knows
its line and problems found anywhere (a typo'd key, a bad mode, a certificate that does not
match its key) point at the line to edit. Parsing goes on after a problem, so one run reports
everything; nothing is returned unless the whole file is good.
"""

from __future__ import annotations

import difflib
import enum
import os
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mtlsproxy.config.files import check_files
from mtlsproxy.config.model import (
    FORWARDED_FIELDS,
    HEADER_FIELDS,
    XFCC_FIELDS,
    CertificateKeyPair,
    Config,
    EngineKind,
    FailedHandshakeBudget,
    ForwardIdentity,
    Http2Settings,
    IdentityForwarding,
    Limits,
    Listener,
    LogFormat,
    LogSettings,
    MetricsSettings,
    ReloadSettings,
    Route,
    SessionTickets,
    Timeouts,
    TLSSettings,
    TLSVersion,
    Upstream,
    UpstreamProtocol,
)
from mtlsproxy.config.problems import ConfigError, ConfigProblem, Location, Role, sort_problems
from mtlsproxy.policy.authorize import AllowList, compile_rule
from mtlsproxy.policy.model import AllowKind, AllowRule, ClientAuth, ClientAuthMode
from mtlsproxy.policy.paths import (
    RESERVED_LABELS,
    PathAuthorization,
    PathMatch,
    PathRule,
    Requirement,
    UnsafePath,
    check_target,
    rule_label,
)

T = TypeVar("T")
S = TypeVar("S", bound=str)

MAX_CONFIG_BYTES = 1024 * 1024
MAX_WORKERS = 256

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _MERGE = (_TAG + t for t in ("str", "int", "float", "bool", "merge"))
_DESCRIPTIONS = {
    _STR: "a string",
    _INT: "an integer",
    _FLOAT: "a number",
    _BOOL: "a boolean",
    _TAG + "null": "nothing (null)",
}
_SCALARS = SafeConstructor()  # stateless for the scalar constructors used here

_LABEL = re.compile(r"[a-z0-9_-]{1,32}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")  # RFC 9110 section 5.6.2
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"([0-9]+)\s*(B|KiB|MiB|GiB)?")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_BUFFER_MIN, _BUFFER_MAX = 16 << 10, 64 << 20
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes on Linux, with the terminating NUL
LOG_LEVELS = ("debug", "info", "warning", "error")

# The keys each mapping accepts, in the order "expected one of" lists them; config.schema
# describes exactly these (an allow rule's one key is an AllowKind).
CONFIG_KEYS = ("listeners", "metrics", "log", "reload", "workers")
LISTENER_KEYS = (
    "name", "listen", "engine", "tls", "client_auth", "upstream", "forward_identity",
    "http_authorization", "routes", "timeouts", "limits",
)  # fmt: skip
ROUTE_KEYS = (
    "name", "sni", "tls", "client_auth", "upstream", "forward_identity", "http_authorization",
)  # fmt: skip
HTTP_AUTHORIZATION_KEYS = ("rules", "default", "enforce")
PATH_RULE_KEYS = ("name", "prefix", "exact", "methods", "require", "allow")
TLS_KEYS = ("certificates", "min_version", "alpn", "record_padding", "session_tickets")
SESSION_TICKETS_KEYS = ("keys", "max_age")
MAX_TICKET_AGE = 7 * 24 * 60 * 60.0  # RFC 8446 section 4.6.1
CERTIFICATE_KEYS = ("certificate", "key")
CLIENT_AUTH_KEYS = ("mode", "ca", "crl", "allow", "enforce")
FORWARD_IDENTITY_KEYS = (
    "mode",
    "xfcc",
    "headers",
    "include_certificate",
    "crc32c",
    "forwarded",
    "trust_forwarded",
    "upstream_protocol",
    "http2",
)
HTTP2_KEYS = (
    "max_concurrent_streams",
    "max_header_list_size",
    "initial_window_size",
    "max_resets",
    "reset_interval",
)
MAX_HTTP2_WINDOW = 64 * 1024 * 1024
MAX_HTTP2_STREAMS = 10_000
MIN_HEADER_LIST, MAX_HEADER_LIST = 1024, 1024 * 1024
DURATION_TIMEOUT_KEYS = ("handshake", "connect", "idle", "drain")  # above zero
# shutdown_delay and lingering may be zero (off)
TIMEOUT_KEYS = (*DURATION_TIMEOUT_KEYS, "shutdown_delay", "lingering")
LIMITS_KEYS = ("max_connections", "max_handshakes", "buffer_size", "failed_handshakes_per_source")
FAILED_HANDSHAKES_KEYS = ("rate", "burst")
METRICS_KEYS = ("listen", "enabled")
LOG_KEYS = ("format", "level", "access")
RELOAD_KEYS = ("watch", "interval")
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")

# A listener's settings start from this; a required key that is missing or wrong (and already
# reported) stays empty, so its routes can still be checked.
_PLACEHOLDER_ROUTE = Route(
    name="default",
    sni=(),
    tls=TLSSettings(certificates=()),
    client_auth=ClientAuth(),
    upstream=Upstream(),
)


def load_config(path: Path) -> Config:
    """The config in ``path``, or ``ConfigError`` listing every error. Warnings are dropped:
    callers that show them use ``load_config_with_warnings``."""
    return load_config_with_warnings(path)[0]


def load_config_with_warnings(path: Path) -> tuple[Config, list[ConfigProblem]]:
    """The config in ``path`` and its warnings (a certificate about to expire), sorted by line.

    Raises ``ConfigError`` when there is any error; its ``problems`` include the warnings too,
    so a failing ``check`` shows the whole picture.
    """
    parser = _Parser(path)
    config = parser.document(_compose(path))
    problems = sort_problems([*parser.problems, *check_files(config, parser.locations)])
    if any(p.severity == "error" for p in problems):
        raise ConfigError(problems)
    return config, problems


def _compose(path: Path) -> Node:
    """The YAML node tree of ``path``; a file that cannot even be composed is one problem."""

    def fail(line: int | None, message: str) -> ConfigError:
        return ConfigError([ConfigProblem(path, line, "", message)])

    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise fail(None, f"cannot read the config: {e.strerror}") from e
    if len(data) > MAX_CONFIG_BYTES:
        raise fail(None, "the config is larger than 1 MiB")
    try:
        root = yaml.compose(data, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else None
        raise fail(line, f"invalid YAML: {e.problem}") from e
    except yaml.YAMLError as e:
        raise fail(None, f"invalid YAML: {e}") from e
    except RecursionError as e:
        raise fail(None, "invalid YAML: nested too deeply") from e
    if root is None:
        raise fail(None, "the config is empty; it needs at least 'listeners'")
    return root


class _Invalid(Exception):
    """A value is wrong; the parser reports the message at the value's line and key path."""


class _Reported(Exception):
    """A value is wrong and its problems are already reported."""


class _Failed(enum.Enum):
    FAILED = enum.auto()


Convert = Callable[[Node, str], T]
_Registry = dict[Any, str]  # a claimed value -> where it was claimed first, for the message


@dataclass
class _Map:
    """A mapping's known keys, each once, with their key and value nodes."""

    node: MappingNode
    keys: dict[str, Node] = field(default_factory=dict)
    values: dict[str, Node] = field(default_factory=dict)


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _DESCRIPTIONS.get(node.tag, f"a {node.tag} value")


def _expected(what: str, node: Node) -> _Invalid:
    return _Invalid(f"expected {what}, got {_describe(node)}")


def _leaf(convert: Callable[[Node], T]) -> Convert[T]:
    """A converter of one scalar: its problems go to its own node and key path."""
    return lambda node, _path: convert(node)


def _keep_node(node: Node, _path: str) -> Node:
    """For a value parsed later, once what it inherits from exists."""
    return node


def _require(values: Mapping[str, object], keys: Iterable[str]) -> None:
    if not all(key in values for key in keys):
        raise _Reported  # the missing key is already reported


def _key_problem(key: Node, allowed: Collection[str], seen: Mapping[str, Node]) -> str | None:
    if key.tag == _MERGE:
        return "merge keys (<<) are not supported; alias the whole value instead"
    if not (isinstance(key, ScalarNode) and key.tag == _STR):
        return f"keys must be strings, got {_describe(key)}"
    if key.value in seen:
        return f"duplicate key (first at line {_line(seen[key.value])})"
    if key.value not in allowed:
        close = difflib.get_close_matches(key.value, allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"expected one of {', '.join(allowed)}"
        return f"unknown key {key.value!r}; {hint}"
    return None


# --- scalars ------------------------------------------------------------------------------


def _string(node: Node) -> str:
    """Text. A plain number is taken as written (``name: 443``, ``min_version: 1.2``)."""
    if not (isinstance(node, ScalarNode) and node.tag in (_STR, _INT, _FLOAT)):
        raise _expected("a string", node)
    if not node.value:
        raise _Invalid("must not be empty")
    return str(node.value)


def _boolean(node: Node) -> bool:
    if not (isinstance(node, ScalarNode) and node.tag == _BOOL):
        raise _expected("true or false", node)
    return bool(_SCALARS.construct_yaml_bool(node))


def _int_value(node: Node) -> int:
    if not (isinstance(node, ScalarNode) and node.tag == _INT):
        raise _expected("an integer", node)
    return int(_SCALARS.construct_yaml_int(node))


def _positive_int(node: Node) -> int:
    value = _int_value(node)
    if value < 1:
        raise _Invalid(f"{value} must be at least 1")
    return value


def _one_of(choices: Iterable[S], unavailable: Collection[S] = ()) -> Callable[[Node], S]:
    allowed = {str(choice): choice for choice in choices}

    def convert(node: Node) -> S:
        value = _string(node)
        if value not in allowed:
            raise _Invalid(f"{value!r} is not one of {', '.join(allowed)}")
        if allowed[value] in unavailable:
            raise _Invalid(f"{value!r} is not available in this version")
        return allowed[value]

    return convert


def _record_padding(node: Node) -> int:
    """0 (none) or a block size from 2 to 16384 bytes (one record's plaintext)."""
    size = _int_value(node)
    if size != 0 and not 2 <= size <= 2**14:
        raise _Invalid(f"{size} is not 0 (no padding) or a block size from 2 to 16384")
    return size


def _ticket_age(node: Node) -> float:
    """A duration above zero, at most 7 days (RFC 8446 section 4.6.1)."""
    seconds = _duration(node)
    if seconds > MAX_TICKET_AGE:
        raise _Invalid(f"{node.value!r} is more than 7 days (RFC 8446 section 4.6.1)")
    return seconds


def _workers(node: Node) -> int:
    """A positive number of worker processes, or ``auto``: one per CPU this process may use."""
    if isinstance(node, ScalarNode) and node.value == "auto":
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    count = _positive_int(node)
    if count > MAX_WORKERS:
        raise _Invalid(f"{count} workers is more than {MAX_WORKERS}")
    return count


def _label(node: Node) -> str:
    value = _string(node)
    if not _LABEL.fullmatch(value):
        raise _Invalid(f"{value!r} must be 1 to 32 of a-z 0-9 _ - (it becomes a metric label)")
    return value


def _address(node: Node, *, zero_port: bool) -> tuple[str, int]:
    """``host:port``, with IPv6 in brackets. Port 0 (any free port) only where it makes sense
    (listening, for tests)."""
    text = _string(node)
    host, _, port = text.rpartition(":")
    if not host or not _PORT.fullmatch(port):
        raise _Invalid(f"{text!r} is not host:port, like 127.0.0.1:8443 or [::1]:8443")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise _Invalid(f"{text!r}: brackets are for IPv6 addresses only")
    elif ":" in host:
        raise _Invalid(f"{text!r}: write IPv6 addresses in brackets, like [::1]:8443")
    elif not _HOSTNAME.fullmatch(host):
        raise _Invalid(f"{host!r} is not a host name or IP address")
    lowest = 0 if zero_port else 1
    if not lowest <= int(port) <= 65535:
        raise _Invalid(f"port {int(port)} is not in {lowest}..65535")
    return host, int(port)


def _host_pattern(node: Node) -> str:
    """A host name or a ``*.`` wildcard (one label), lowercased as SNI compares."""
    text = _string(node)
    name = text.lower()
    exact = name.removeprefix("*.")
    if len(exact) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in exact.split(".")):
        raise _Invalid(f"{text!r} is not a host name or a wildcard like *.example.org")
    return name


def _route_name_from(sni: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "_", sni.replace("*", "wildcard"))[:32]


def _duration(node: Node) -> float:
    """Seconds, from ``500ms``, ``10s``, ``5m``, ``1h`` or a plain number of seconds."""
    seconds = _seconds(node)
    if not 0 < seconds < float("inf"):
        raise _Invalid(f"{node.value!r} must be a duration greater than zero")
    return seconds


def _delay(node: Node) -> float:
    """A duration that may be zero (off)."""
    seconds = _seconds(node)
    if not 0 <= seconds < float("inf"):
        raise _Invalid(f"{node.value!r} must be a duration of zero or more")
    return seconds


def _seconds(node: Node) -> float:
    if isinstance(node, ScalarNode) and node.tag in (_INT, _FLOAT):
        number = (
            _SCALARS.construct_yaml_float if node.tag == _FLOAT else _SCALARS.construct_yaml_int
        )
        seconds = float(number(node))
    else:
        text = _string(node)
        match = _DURATION.fullmatch(text)
        if not match:
            raise _Invalid(f"{text!r} is not a duration like 500ms, 10s, 5m or 1h")
        seconds = float(match[1]) * _DURATION_UNITS[match[2]]
    return seconds


def _rate(node: Node) -> float:
    """Events a second: a number above zero."""
    if not (isinstance(node, ScalarNode) and node.tag in (_INT, _FLOAT)):
        raise _expected("a number (per second)", node)
    number = _SCALARS.construct_yaml_float if node.tag == _FLOAT else _SCALARS.construct_yaml_int
    rate = float(number(node))
    if not 0 < rate < float("inf"):
        raise _Invalid(f"{node.value!r} must be a number above zero")
    return rate


def _buffer_size(node: Node) -> int:
    """Bytes, from ``256KiB``, ``1MiB`` or a plain number of bytes."""
    text = _string(node)
    match = _SIZE.fullmatch(text) if node.tag != _FLOAT else None
    if not match:
        raise _Invalid(f"{text!r} is not a size like 256KiB or 1MiB")
    size = int(match[1]) * _SIZE_UNITS[match[2]]
    if not _BUFFER_MIN <= size <= _BUFFER_MAX:
        raise _Invalid(f"{text!r} is not between 16KiB and 64MiB")
    return size


def _bounded_int(low: int, high: int, unit: str = "") -> Callable[[Node], int]:
    def convert(node: Node) -> int:
        value = _int_value(node)
        if not low <= value <= high:
            raise _Invalid(f"{value} is not between {low} and {high}{unit}")
        return value

    return convert


_max_concurrent_streams = _bounded_int(1, MAX_HTTP2_STREAMS)
_max_header_list_size = _bounded_int(MIN_HEADER_LIST, MAX_HEADER_LIST, " bytes")
# RFC 9113 section 6.9.2: at least one byte, at most 2^31-1; past 64 MiB the memory bound is
# limits.buffer_size anyway
_initial_window_size = _bounded_int(1, MAX_HTTP2_WINDOW, " bytes")
_max_resets = _bounded_int(1, 1_000_000)


def _alpn(node: Node) -> str:
    value = _string(node)
    if not (value.isascii() and len(value) <= 255):
        raise _Invalid(f"{value!r} is not an ALPN protocol name (up to 255 ASCII characters)")
    return value


def _allow_pattern(kind: AllowKind, node: Node) -> str:
    """The pattern of one allow rule, normalized where the form is loose (fingerprints)."""
    text = _string(node)
    if kind is AllowKind.SHA256:
        digest = text.replace(":", "").lower()
        if not _SHA256.fullmatch(digest):
            raise _Invalid(f"{text!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")
        return digest
    if kind is AllowKind.DNS:
        return _host_pattern(node)
    if kind is AllowKind.SPIFFE_ID and not text.startswith("spiffe://"):
        raise _Invalid(f"{text!r} is not a SPIFFE ID like spiffe://example.org/ns/prod/sa/web")
    try:
        compile_rule(AllowRule(kind, text))  # the policy's own rules: SPIFFE ID syntax, `*`
    except ValueError as error:
        raise _Invalid(str(error)) from None
    return text


def _rule_name(node: Node) -> str:
    """A rule's name: its metric label, so never a number (unnamed rules are labelled by their
    index) nor ``default``/``none`` (requests no rule decided)."""
    name = _label(node)
    if name.isdigit():
        raise _Invalid(f"{name!r}: a rule name is not a number (unnamed rules are labelled so)")
    if name in RESERVED_LABELS:
        raise _Invalid(f"{name!r} is the label of requests no rule decides; choose another")
    return name


def _rule_path(node: Node) -> str:
    """A path a request can have: what ``policy.paths.check_target`` accepts, without a query."""
    text = _string(node)
    if "?" in text:
        raise _Invalid(f"{text!r}: rules compare the path only, without the query (?...)")
    try:
        return check_target(text)
    except UnsafePath as unsafe:
        raise _Invalid(f"{text!r} can never match: requests are refused when {unsafe}") from None


def _method(node: Node) -> str:
    """An HTTP method, as sent: case-sensitive (RFC 9110 section 9.1)."""
    text = _string(node)
    if not _TOKEN.fullmatch(text):
        raise _Invalid(f"{text!r} is not an HTTP method")
    if text != text.upper():
        raise _Invalid(f"{text!r}: methods are case-sensitive; write {text.upper()!r}")
    return text


_listen_address = partial(_address, zero_port=True)
_engine = _one_of(EngineKind)
_forward_identity_mode = _one_of(ForwardIdentity)
_upstream_protocol = _one_of(UpstreamProtocol)


def _forwarded_field(node: Node) -> str:
    return _one_of(FORWARDED_FIELDS)(node)


def _xfcc_field(node: Node) -> str:
    return _one_of(XFCC_FIELDS)(node)


def _header_field(node: Node) -> str:
    return _one_of(HEADER_FIELDS)(node)


# --- structure ----------------------------------------------------------------------------


class _Parser:
    """Walks the node tree, collecting problems and the place each file path was named."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.base_dir = file.absolute().parent
        self.problems: list[ConfigProblem] = []
        self.locations: dict[tuple[Path, Role], Location] = {}

    def problem(self, node: Node, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(self.file, _line(node), path, message))

    def warn(self, node: Node, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(self.file, _line(node), path, message, "warning"))

    def convert(self, convert: Convert[T], node: Node, path: str) -> T | _Failed:
        try:
            return convert(node, path)
        except _Invalid as e:
            self.problem(node, path, str(e))
        except _Reported:
            pass
        return _Failed.FAILED

    def read(
        self,
        node: Node,
        path: str,
        converters: Mapping[str, Convert[Any]],
        *,
        keys: Sequence[str],
        required: Iterable[str] = (),
    ) -> tuple[dict[str, Any], _Map]:
        """The converted values of a mapping's ``keys`` (each one's converter in
        ``converters``). Unknown, duplicate and wrong keys are reported and left out, as are
        missing required ones."""
        if not isinstance(node, MappingNode):
            raise _expected("a mapping", node)
        converters = {key: converters[key] for key in keys}
        m = _Map(node)
        for key, value in node.value:
            problem = _key_problem(key, converters.keys(), m.keys)
            if problem:
                name = key.value if isinstance(key, ScalarNode) else "?"
                self.problem(key, _join(path, name), problem)
            else:
                m.keys[key.value], m.values[key.value] = key, value
        for name in required:
            if name not in m.values:
                self.problem(node, _join(path, name), "is required")
        values = {
            name: self.convert(converters[name], value, _join(path, name))
            for name, value in m.values.items()
        }
        return {k: v for k, v in values.items() if v is not _Failed.FAILED}, m

    def section(
        self, cls: Callable[..., T], keys: Sequence[str], converters: Mapping[str, Convert[Any]]
    ) -> Convert[T]:
        """A mapping of optional keys, straight into the dataclass ``cls``."""
        return lambda node, path: cls(**self.read(node, path, converters, keys=keys)[0])

    def sequence(
        self, node: Node, path: str, item: Convert[T], *, non_empty: bool = False
    ) -> tuple[T, ...]:
        if not isinstance(node, SequenceNode):
            raise _expected("a list", node)
        if non_empty and not node.value:
            raise _Invalid("must not be empty")
        items = (self.convert(item, child, f"{path}[{i}]") for i, child in enumerate(node.value))
        return tuple(i for i in items if i is not _Failed.FAILED)

    def claim(self, registry: _Registry, value: object, node: Node, path: str, what: str) -> None:
        """Report ``what`` if an earlier part of the config already has ``value``."""
        if value in registry:
            self.problem(node, path, f"{what} is already used by {registry[value]}")
        else:
            registry[value] = f"{path} (line {_line(node)})"

    def file_path(self, node: Node, path: str) -> Path:
        """A file, relative to the config's directory; remembered for ``check_files`` in the
        role its key names (``...tls.certificates[0].key`` names a key)."""
        resolved = self.base_dir / _string(node)
        role = cast(Role, path.rpartition(".")[2])
        self.locations.setdefault((resolved, role), Location(_line(node), path))
        return resolved

    def upstream(self, node: Node, _path: str) -> Upstream:
        text = _string(node)
        if not text.startswith("unix:"):
            host, port = _address(node, zero_port=False)
            return Upstream(host=host, port=port)
        if text == "unix:":
            raise _Invalid("'unix:' needs a socket path, like unix:/run/app.sock")
        socket = self.base_dir / text.removeprefix("unix:")
        if len(os.fsencode(socket)) > _UNIX_PATH_MAX:
            raise _Invalid(f"the socket path {socket} is longer than {_UNIX_PATH_MAX} bytes")
        return Upstream(unix_path=socket)

    # --- the schema ---------------------------------------------------------------------

    def document(self, root: Node) -> Config:
        names: _Registry = {}
        addresses: _Registry = {}
        listener = partial(self.listener, names=names, addresses=addresses)
        converters: dict[str, Convert[Any]] = {
            "listeners": lambda n, p: self.sequence(n, p, listener, non_empty=True),
            "metrics": partial(self.metrics, addresses=addresses),
            "log": self.section(
                LogSettings,
                LOG_KEYS,
                {
                    "format": _leaf(_one_of(LogFormat)),
                    "level": _leaf(_one_of(LOG_LEVELS)),
                    "access": _leaf(_boolean),
                },
            ),
            "reload": self.section(
                ReloadSettings,
                RELOAD_KEYS,
                {"watch": _leaf(_boolean), "interval": _leaf(_duration)},
            ),
            "workers": _leaf(_workers),
        }
        try:
            own, m = self.read(root, "", converters, keys=CONFIG_KEYS, required=("listeners",))
        except _Invalid as e:
            self.problem(root, "", str(e))
            return Config(source=self.file, listeners=())
        if own.get("workers", 1) > 1 and any(li.port == 0 for li in own.get("listeners", ())):
            self.problem(
                m.values["workers"], "workers",
                "several workers share their listeners' ports: port 0 (any free port) "
                "would give each worker a different one; set the ports",
            )  # fmt: skip
        return Config(**{"source": self.file, "listeners": (), **own})

    def metrics(self, node: Node, path: str, addresses: _Registry) -> MetricsSettings:
        own, m = self.read(
            node,
            path,
            {"listen": _leaf(_listen_address), "enabled": _leaf(_boolean)},
            keys=METRICS_KEYS,
        )
        if "listen" in own:
            own["host"], own["port"] = own.pop("listen")
            if own.get("enabled", True):
                self.claim_address(addresses, (own["host"], own["port"]), m.values["listen"], path)
        return MetricsSettings(**own)

    def claim_address(
        self, addresses: _Registry, address: tuple[str, int], node: Node, path: str
    ) -> None:
        host, port = address
        if port == 0:  # port 0: the kernel picks a free port each time
            return
        # A wildcard address takes the port on every interface: 0.0.0.0:P and 127.0.0.1:P
        # cannot both bind.
        overlap = next(
            (
                taken
                for taken in addresses
                if isinstance(taken, tuple)
                and taken[1] == port
                and taken[0] != host
                and (taken[0] in _WILDCARD_HOSTS or host in _WILDCARD_HOSTS)
            ),
            None,
        )
        if overlap is not None:
            self.problem(
                node,
                _join(path, "listen"),
                f"address {node.value} overlaps {addresses[overlap]}: a wildcard address "
                f"takes port {port} on every interface",
            )
            return
        self.claim(addresses, address, node, _join(path, "listen"), f"address {node.value}")

    def listener(self, node: Node, path: str, names: _Registry, addresses: _Registry) -> Listener:
        own, m = self.read(
            node,
            path,
            {
                "name": _leaf(_label),
                "listen": _leaf(_listen_address),
                "engine": _leaf(_engine),
                "tls": partial(self.tls, base=None),
                "client_auth": partial(self.client_auth, base=ClientAuth()),
                "upstream": self.upstream,
                "forward_identity": self.forward_identity,
                "http_authorization": self.http_authorization,
                "routes": _keep_node,
                "timeouts": self.section(
                    Timeouts,
                    TIMEOUT_KEYS,
                    {
                        **dict.fromkeys(DURATION_TIMEOUT_KEYS, _leaf(_duration)),
                        "shutdown_delay": _leaf(_delay),
                        "lingering": _leaf(_delay),
                    },
                ),
                "limits": self.section(
                    Limits,
                    LIMITS_KEYS,
                    {
                        "max_connections": _leaf(_positive_int),
                        "max_handshakes": _leaf(_positive_int),
                        "buffer_size": _leaf(_buffer_size),
                        "failed_handshakes_per_source": self.failed_handshake_budget,
                    },
                ),
            },
            keys=LISTENER_KEYS,
            required=("name", "listen", "tls", "upstream"),
        )
        if "name" in own:
            name = own["name"]
            self.claim(names, name, m.values["name"], f"{path}.name", f"listener name {name!r}")
        host, port = own.get("listen", ("", 0))
        if "listen" in own:
            self.claim_address(addresses, (host, port), m.values["listen"], path)
        inherited = ("tls", "client_auth", "upstream", "forward_identity", "http_authorization")
        default = replace(_PLACEHOLDER_ROUTE, **{k: own[k] for k in inherited if k in own})
        if "http_authorization" in own:
            self.check_http_authorization(default, m.values["http_authorization"], path)
        self.check_h2_upstream(default, m.values.get("tls", node), path)
        # A listener policy that did not load (already reported) gives its routes nothing to
        # inherit: their own client_auth is checked, not the rules that depend on the base.
        auth_failed = "client_auth" in m.values and "client_auth" not in own
        routes = (
            self.convert(
                partial(self.routes, default=default, auth_known=not auth_failed),
                own["routes"],
                f"{path}.routes",
            )
            if "routes" in own
            else ()
        )
        listener = Listener(
            name=own.get("name", ""),
            host=host,
            port=port,
            engine=own.get("engine", EngineKind.NATIVE),
            default_route=default,
            routes=() if routes is _Failed.FAILED else routes,
            **{k: own[k] for k in ("timeouts", "limits") if k in own},
        )
        self.audit_on_openssl(listener, node, path)
        return listener

    def failed_handshake_budget(self, node: Node, path: str) -> FailedHandshakeBudget | None:
        """``{rate, burst}`` (each optional), ``true`` for the defaults or ``false``: off."""
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            return FailedHandshakeBudget() if _boolean(node) else None
        if not isinstance(node, MappingNode):
            raise _expected("a mapping of rate and burst, or false (off)", node)
        read = self.section(
            FailedHandshakeBudget,
            FAILED_HANDSHAKES_KEYS,
            {"rate": _leaf(_rate), "burst": _leaf(_positive_int)},
        )
        return read(node, path)

    def audit_on_openssl(self, listener: Listener, node: Node, path: str) -> None:
        """Audit mode cannot admit what OpenSSL refuses inside its handshake: say so once."""
        if listener.engine != "openssl":
            return
        audited = [
            route.name
            for route in (listener.default_route, *listener.routes)
            if route.client_auth.mode is not ClientAuthMode.NONE and not route.client_auth.enforce
        ]
        if audited:
            self.warn(
                node,
                path,
                f"audit mode (client_auth.enforce: false) on route(s) {', '.join(audited)} with "
                "engine openssl admits clients without a certificate or outside the allow-list "
                "as would_refuse, but a certificate that fails verification (expired, untrusted, "
                "revoked) still fails the handshake: OpenSSL verifies inside it. engine: native "
                "admits those as would_refuse too",
            )

    def routes(
        self, node: Node, path: str, default: Route, auth_known: bool = True
    ) -> tuple[Route, ...]:
        names: _Registry = {"default": "the listener's own settings"}
        patterns: _Registry = {}
        route = partial(
            self.route, default=default, names=names, patterns=patterns, auth_known=auth_known
        )
        return self.sequence(node, path, route)

    def route(
        self,
        node: Node,
        path: str,
        default: Route,
        names: _Registry,
        patterns: _Registry,
        auth_known: bool = True,
    ) -> Route:
        """A route: what it does not say, it inherits from the listener (``default``)."""
        own, m = self.read(
            node,
            path,
            {
                "name": _leaf(_label),
                "sni": partial(self.sni, patterns=patterns),
                "tls": partial(self.tls, base=default.tls),
                "client_auth": partial(
                    self.client_auth, base=default.client_auth if auth_known else None
                ),
                "upstream": self.upstream,
                "forward_identity": self.forward_identity,
                "http_authorization": self.http_authorization,
            },
            keys=ROUTE_KEYS,
            required=("sni",),
        )
        if "name" in own:
            name, named_by = own["name"], m.values["name"]
            what = f"route name {name!r}"
        elif own.get("sni"):
            name, named_by = _route_name_from(own["sni"][0]), m.values["sni"]
            what = f"route name {name!r} (derived from the first SNI; set 'name')"
        else:
            raise _Reported  # no SNI: reported by read()
        self.claim(names, name, named_by, _join(path, "name"), what)
        route = replace(default, **{**own, "name": name})
        if "tls" in own or "forward_identity" in own:
            self.check_h2_upstream(route, m.values.get("tls", node), path)
        settings = (route.client_auth, route.forward_identity)
        if "http_authorization" in own:
            self.check_http_authorization(route, m.values["http_authorization"], path)
        elif "http_authorization" not in m.values and settings != (
            default.client_auth,
            default.forward_identity,
        ):  # the listener's rules (checked there) with this route's own settings
            self.check_http_authorization(route, node, path, inherited=True)
        return route

    def check_h2_upstream(self, route: Route, where: Node, path: str) -> None:
        """HTTP mode offers ALPN by ``upstream_protocol``; ``h2`` asked for in ``tls.alpn``
        with ``upstream_protocol: http/1.1`` (ALPN http/1.1 only) is refused rather than
        silently not offered: translation is asked for with ``h2-to-http/1.1``."""
        identity = route.forward_identity
        if (
            identity.mode is ForwardIdentity.HTTP
            and identity.upstream_protocol is UpstreamProtocol.HTTP1
            and "h2" in route.tls.alpn
        ):
            self.problem(
                where,
                _join(path, "tls.alpn"),
                "h2 with forward_identity mode http and upstream_protocol http/1.1: HTTP mode "
                "offers ALPN by upstream_protocol; set forward_identity.upstream_protocol to "
                "h2-to-http/1.1 to serve HTTP/2 clients to an HTTP/1.1 upstream, to auto or "
                "h2c if the upstream speaks h2c, or remove h2",
            )

    def check_http_authorization(
        self, route: Route, where: Node, path: str, *, inherited: bool = False
    ) -> None:
        """Per-path rules need HTTP mode, and a certificate to check: say when they cannot be
        met (mode none) or are always met (mode require: every client is verified). ``where``:
        the rules' node, or the route's when it inherits them."""
        authorization = route.http_authorization
        if not authorization.active:
            return
        key = _join(path, "http_authorization")
        if route.forward_identity.mode is not ForwardIdentity.HTTP:
            origin = " (from the listener)" if inherited else ""
            self.problem(
                where, key,
                f"has no effect{origin}: requests are read only with forward_identity mode "
                f"http, and this route's is {route.forward_identity.mode}",
            )  # fmt: skip
            return
        verified = [
            (f"rules[{i}] ({rule_label(i, rule)})", rule)
            for i, rule in enumerate(authorization.rules)
            if rule.require is Requirement.VERIFIED
        ]
        if authorization.default is Requirement.VERIFIED:
            verified.append(("default", None))
        auth = route.client_auth
        if auth.mode is ClientAuthMode.NONE and verified:
            self.warn(
                where, key,
                f"{', '.join(name for name, _ in verified)} require a verified client, but "
                "client_auth.mode is none: no client is ever asked for a certificate, so they "
                f"{'' if authorization.enforce else 'would '}refuse every request they decide; "
                "use mode request",
            )  # fmt: skip
        redundant = [name for name, rule in verified if rule is None or not rule.allow]
        if auth.mode is ClientAuthMode.REQUIRE and auth.enforce and redundant:
            self.warn(
                where, key,
                f"{', '.join(redundant)}: require verified is always met with client_auth.mode "
                "require (every client is verified at the handshake); per-path rules are for "
                "mode request, where clients without a certificate are admitted and the rules "
                "decide per request",
            )  # fmt: skip

    def http_authorization(self, node: Node, path: str) -> PathAuthorization:
        """``http_authorization``: ``rules`` tried in order, ``default`` for the rest;
        ``enforce: false`` for audit mode (``policy.paths``). A route's replaces the listener's
        as a whole, ``enforce`` included: a route's own rules are enforced unless it says so."""
        labels: _Registry = {}
        own, m = self.read(
            node,
            path,
            {
                "rules": lambda n, p: self.sequence(n, p, partial(self.path_rule, labels=labels)),
                "default": _leaf(_one_of(Requirement)),
                "enforce": _leaf(_boolean),
            },
            keys=HTTP_AUTHORIZATION_KEYS,
        )
        if own.keys() != m.values.keys():
            raise _Reported
        if len(own.get("rules", ())) != len(m.values["rules"].value if "rules" in own else ()):
            raise _Reported  # a rule left out (reported) would change what the others decide
        return PathAuthorization(**own)

    def path_rule(self, node: Node, path: str, labels: _Registry) -> PathRule:
        own, m = self.read(
            node,
            path,
            {
                "name": _leaf(_rule_name),
                "prefix": _leaf(_rule_path),
                "exact": _leaf(_rule_path),
                "methods": lambda n, p: self.sequence(n, p, _leaf(_method), non_empty=True),
                "require": _leaf(_one_of(Requirement)),
                "allow": lambda n, p: self.sequence(n, p, self.allow_rule, non_empty=True),
            },
            keys=PATH_RULE_KEYS,
            required=("require",),
        )
        matches = [kind for kind in PathMatch if kind.value in m.values]
        if len(matches) != 1:
            what = "both prefix and exact" if matches else "neither prefix nor exact"
            self.problem(node, path, f"has {what}: a rule matches one path, prefix: or exact:")
            raise _Reported
        if own.keys() != m.values.keys():
            raise _Reported
        _require(own, ("require",))
        index = int(path.rpartition("[")[2].rstrip("]"))
        rule = PathRule(
            match=matches[0],
            path=own[matches[0].value],
            require=own["require"],
            methods=tuple(dict.fromkeys(own.get("methods", ()))),
            allow=own.get("allow", ()),
            name=own.get("name"),
        )
        label = rule_label(index, rule)
        self.claim(
            labels, label, m.values.get("name", node), _join(path, "name"), f"rule {label!r}"
        )
        if rule.allow:
            if rule.require is not Requirement.VERIFIED:
                self.problem(
                    m.keys["allow"], _join(path, "allow"),
                    f"has no effect with require {rule.require}: an allow list admits verified "
                    "identities; use require: verified",
                )  # fmt: skip
            try:
                AllowList(rule.allow)
            except ValueError as error:
                self.problem(m.values["allow"], _join(path, "allow"), str(error))
        return rule

    def sni(self, node: Node, path: str, patterns: _Registry) -> tuple[str, ...]:
        """One pattern or a list; each routed by one route only."""

        def pattern(node: Node, path: str) -> str:
            value = _host_pattern(node)
            self.claim(patterns, value, node, path, f"SNI {value!r}")
            return value

        if isinstance(node, ScalarNode):
            return (pattern(node, path),)
        return self.sequence(node, path, pattern, non_empty=True)

    def tls(self, node: Node, path: str, base: TLSSettings | None) -> TLSSettings:
        """The listener's TLS settings (``base`` None), or a route's over the listener's."""
        own, _ = self.read(
            node,
            path,
            {
                "certificates": lambda n, p: self.sequence(n, p, self.key_pair, non_empty=True),
                "min_version": _leaf(_one_of(TLSVersion)),
                "alpn": lambda n, p: self.sequence(n, p, _leaf(_alpn)),
                "record_padding": _leaf(_record_padding),
                "session_tickets": partial(
                    self.session_tickets, base=(base or _PLACEHOLDER_ROUTE.tls).session_tickets
                ),
            },
            keys=TLS_KEYS,
            required=() if base else ("certificates",),
        )
        return replace(base or _PLACEHOLDER_ROUTE.tls, **own)

    def session_tickets(self, node: Node, path: str, base: SessionTickets) -> SessionTickets:
        """A route's over the listener's, key by key (a route setting only max_age keeps the
        listener's key file)."""
        own, _ = self.read(
            node,
            path,
            {"keys": self.file_path, "max_age": _leaf(_ticket_age)},
            keys=SESSION_TICKETS_KEYS,
        )
        return replace(base, **own)

    def key_pair(self, node: Node, path: str) -> CertificateKeyPair:
        keys = CERTIFICATE_KEYS
        own, _ = self.read(
            node, path, dict.fromkeys(keys, self.file_path), keys=keys, required=keys
        )
        _require(own, keys)
        return CertificateKeyPair(**own)

    def client_auth(self, node: Node, path: str, base: ClientAuth | None) -> ClientAuth:
        """The listener's policy (over the default ``none``) or a route's over the listener's,
        key by key: a route saying only ``mode`` and ``allow`` keeps the listener's CA and CRL.
        ``base`` None: the listener's policy had an error (reported once, there).
        """
        own, m = self.read(
            node,
            path,
            {
                "mode": _leaf(_one_of(ClientAuthMode)),
                "ca": self.file_path,
                "crl": self.file_path,
                "allow": lambda n, p: self.sequence(n, p, self.allow_rule),
                "enforce": _leaf(_boolean),
            },
            keys=CLIENT_AUTH_KEYS,
        )
        if own.keys() != m.values.keys() or (base is None and "mode" not in own):
            raise _Reported  # a wrong value here or in the base: the rules below would guess
        base = base or ClientAuth()
        mode = own.get("mode", base.mode)
        if mode is ClientAuthMode.NONE:
            for key in ("ca", "crl", "allow", "enforce"):
                if key in own:
                    self.problem(m.keys[key], _join(path, key), "has no effect with mode none")
            return ClientAuth()
        merged = replace(base, **own)
        if merged.ca is None:
            self.problem(node, _join(path, "ca"), f"is required when mode is {mode}")
        return merged

    def forward_identity(self, node: Node, path: str) -> IdentityForwarding:
        """``forward_identity: http`` (a mode alone), or a mapping with ``mode`` and options."""
        if isinstance(node, ScalarNode):
            return IdentityForwarding(mode=_forward_identity_mode(node))
        own, m = self.read(
            node,
            path,
            {
                "mode": _leaf(_forward_identity_mode),
                "xfcc": lambda n, p: self.sequence(n, p, _leaf(_xfcc_field)),
                "headers": self.identity_headers,
                "include_certificate": _leaf(_boolean),
                "crc32c": _leaf(_boolean),
                "forwarded": lambda n, p: self.sequence(n, p, _leaf(_forwarded_field)),
                "trust_forwarded": _leaf(_boolean),
                "upstream_protocol": _leaf(_upstream_protocol),
                "http2": self.http2,
            },
            keys=FORWARD_IDENTITY_KEYS,
            required=("mode",),
        )
        if "mode" not in own:
            raise _Reported
        if "xfcc" in own:
            own["xfcc_fields"] = own.pop("xfcc")
        http_only = (
            "xfcc_fields", "headers", "forwarded", "trust_forwarded", "upstream_protocol", "http2",
        )  # fmt: skip
        pp2_only = ("include_certificate", "crc32c")
        ignored = pp2_only if own["mode"] is ForwardIdentity.HTTP else http_only
        if own["mode"] is ForwardIdentity.NONE:
            ignored = http_only + pp2_only
        for key in ignored:
            if key in own:
                name = "xfcc" if key == "xfcc_fields" else key
                self.problem(
                    m.keys[name], _join(path, name), f"has no effect with mode {own['mode']}"
                )
        return IdentityForwarding(**own)

    def http2(self, node: Node, path: str) -> Http2Settings:
        """``forward_identity.http2``: the HTTP/2 limits (``Http2Settings``)."""
        own, _ = self.read(
            node,
            path,
            {
                "max_concurrent_streams": _leaf(_max_concurrent_streams),
                "max_header_list_size": _leaf(_max_header_list_size),
                "initial_window_size": _leaf(_initial_window_size),
                "max_resets": _leaf(_max_resets),
                "reset_interval": _leaf(_duration),
            },
            keys=HTTP2_KEYS,
        )
        return Http2Settings(**own)

    def identity_headers(self, node: Node, path: str) -> tuple[tuple[str, str], ...]:
        """``{X-SSL-Client-Verify: verify, ...}``: header name -> identity field."""
        if not isinstance(node, MappingNode):
            raise _expected("a mapping of header name to field", node)
        headers = []
        for key, value in node.value:
            name = _string(key)
            if not _TOKEN.fullmatch(name):
                self.problem(key, _join(path, name), "is not a valid header name")
                continue
            field = self.convert(_leaf(_header_field), value, _join(path, name))
            if field is not _Failed.FAILED:
                headers.append((name, field))
        return tuple(headers)

    def allow_rule(self, node: Node, path: str) -> AllowRule:
        rule = self._allow_rule(node, path)
        if rule.kind in (AllowKind.SPIFFE_ID, AllowKind.URI) and rule.pattern.endswith("/*"):
            self.warn(
                node,
                path,
                f"{rule.pattern!r}: a trailing /* matches exactly one more path segment; "
                f"{rule.pattern[:-1]}** matches any depth",
            )
        return rule

    def _allow_rule(self, node: Node, path: str) -> AllowRule:
        kinds = {kind.value: kind for kind in AllowKind}
        if not (isinstance(node, MappingNode) and len(node.value) == 1):
            raise _Invalid(f"expected a mapping with one key, one of {', '.join(kinds)}")
        own, _ = self.read(
            node,
            path,
            {name: _leaf(partial(_allow_pattern, kind)) for name, kind in kinds.items()},
            keys=tuple(kinds),
        )
        if not own:
            raise _Reported
        ((kind, pattern),) = own.items()
        return AllowRule(kinds[kind], pattern)
