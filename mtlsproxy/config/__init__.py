"""The configuration: YAML in, a typed and validated ``Config`` out (or every problem at once)."""

from mtlsproxy.config.files import check_files
from mtlsproxy.config.load import load_config, load_config_with_warnings
from mtlsproxy.config.model import (
    CertificateKeyPair,
    Config,
    ForwardIdentity,
    Limits,
    Listener,
    LogFormat,
    LogSettings,
    MetricsSettings,
    Route,
    Timeouts,
    TLSSettings,
    TLSVersion,
    Upstream,
    UpstreamProtocol,
)
from mtlsproxy.config.problems import ConfigError, ConfigProblem, Location

__all__ = [
    "CertificateKeyPair",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "ForwardIdentity",
    "Limits",
    "Listener",
    "Location",
    "LogFormat",
    "LogSettings",
    "MetricsSettings",
    "Route",
    "TLSSettings",
    "TLSVersion",
    "Timeouts",
    "Upstream",
    "UpstreamProtocol",
    "check_files",
    "load_config",
    "load_config_with_warnings",
]
