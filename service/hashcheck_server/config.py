"""The server's settings: from flags, environment variables and a file.

Every setting of `hashcheck-server serve` can come from four places. The
first that gives it wins:

1. a command-line flag (``--metrics-port 9090``);
2. an environment variable, ``HASHCHECK_`` and the name in capitals
   (``HASHCHECK_METRICS_PORT=9090``);
3. the ``[serve]`` table of a TOML file named by ``--config`` or
   ``HASHCHECK_CONFIG`` (``metrics_port = 9090``);
4. the default.

At start the server logs the effective configuration, each value with where
it came from, as one line (event ``configuration``). Secret settings are
shown as ``***``, never their value.

A setting is declared once, in `SERVE_SETTINGS`: its flag, its variable, its
key in the file, its type and its default all follow from that entry.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hashcheck._version import __version__
from hashcheck_server.access import access_config
from hashcheck_server.errors import HashCheckError
from hashcheck_server.floods import QuarantinePolicy
from hashcheck_server.limits import open_stream_limit
from hashcheck_server.server import ServerConfig
from hashcheck_server.servicer import CheckPolicy

__all__ = [
    "CONFIG_VARIABLE",
    "LOGGING_SETTINGS",
    "SERVE_FLAG_SETTINGS",
    "SERVE_SETTINGS",
    "ConfigError",
    "EffectiveConfig",
    "Setting",
    "add_setting_flags",
    "log_start",
    "resolve",
    "server_config",
]

logger = logging.getLogger(__name__)

CONFIG_VARIABLE = "HASHCHECK_CONFIG"
_PREFIX = "HASHCHECK_"
_FILE_TABLE = "serve"
_MASK = "***"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(HashCheckError):
    """A setting that cannot be used: unknown, of the wrong type, or missing."""


@dataclass(frozen=True)
class Setting:
    """One setting: its name is the file key, and gives the flag and variable."""

    name: str
    kind: type
    default: Any
    help: str
    secret: bool = False
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def variable(self) -> str:
        return _PREFIX + self.name.upper()


SERVE_SETTINGS: tuple[Setting, ...] = (
    Setting("data", Path, None, "the data directory"),
    Setting(
        "follow",
        Path,
        None,
        "serve the snapshot ROOT/current names, following it (instead of --data)",
    ),
    Setting("listen", str, "127.0.0.1:50051", "HOST:PORT"),
    Setting("metrics_port", int, None, "serve Prometheus metrics on this port"),
    Setting(
        "metrics_listen",
        str,
        "127.0.0.1",
        "HOST of the metrics endpoint, apart from --listen's (its samples name "
        "tenants and lists); 0.0.0.0 for a Prometheus on another machine",
    ),
    Setting("workers", int, 1, "server processes sharing the port and table"),
    Setting("threads", int, 16, "gRPC handler threads"),
    Setting(
        "max_open_streams",
        int,
        None,
        "streams open at once per process, for all callers together (default: "
        "--threads less max(2, threads/4), kept for unary calls and health)",
    ),
    Setting("max_batch", int, 1_000_000, "hashes a request"),
    Setting("reload_interval", float, 1.0, "seconds between generation polls"),
    Setting("grace", float, 10.0, "drain time on SIGTERM"),
    Setting(
        "drain_delay",
        float,
        0.0,
        "seconds NOT_SERVING before refusing calls on SIGTERM",
    ),
    Setting(
        "reveal_counts",
        bool,
        False,
        "include table sizes in GetInfo (for operators' own deployments)",
    ),
    # PDQ near-duplicate matching (hashcheck_server.pdq_index).
    Setting("pdq_max_batch", int, 10_000, "PDQ: the most hashes a request"),
    Setting(
        "pdq_max_distance",
        int,
        31,
        "PDQ: the largest Hamming distance a request may ask for (0-64; "
        "above 47 each PDQ check is a linear scan)",
    ),
    Setting(
        "pdq_default_distance",
        int,
        None,
        "PDQ: the distance for requests that name none (default: the max)",
    ),
    # Access (hashcheck_server.access): TLS, the no-tenant opt-out, the audit.
    Setting("tls_cert", Path, None, "PEM certificate (chain) to serve TLS with"),
    Setting("tls_key", Path, None, "PEM private key of --tls-cert"),
    Setting("client_ca", Path, None, "PEM CA that client certificates must chain to"),
    Setting(
        "insecure_no_auth",
        bool,
        False,
        "serve without tenants beyond loopback (logged as a warning)",
    ),
    Setting("audit", Path, None, "the audit log's directory (default DATA/audit)"),
    Setting(
        "audit_retention_days",
        float,
        365.0,
        "prune audit entries older than this many days; 0 keeps them",
    ),
    # Flood quarantine (hashcheck_server.floods).
    Setting(
        "quarantine_tenants",
        int,
        5,
        "hold a hash once it hits for this many tenants within "
        "--quarantine-window, counted per server process; 0 turns it off",
    ),
    Setting(
        "quarantine_window",
        float,
        3600.0,
        "seconds within which --quarantine-tenants must hit a hash",
    ),
    # Receipts (hashcheck_server.signing): the hotline's Ed25519 key.
    Setting(
        "signing_key",
        Path,
        None,
        "Ed25519 key to sign receipts with (default DATA/signing-key.pem if there)",
    ),
    Setting(
        "log_format",
        str,
        "auto",
        "auto, json or text",
        choices=("auto", "json", "text"),
    ),
    Setting("log_level", str, "INFO", "DEBUG, INFO, WARNING or ERROR"),
)


@dataclass(frozen=True)
class EffectiveConfig:
    """The value of every setting and where it came from."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]
    settings: Sequence[Setting]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def masked(self) -> dict[str, Any]:
        """The values as they may be logged: secrets hidden, paths as text."""
        shown: dict[str, Any] = {}
        for setting in self.settings:
            value = self.values[setting.name]
            if setting.secret and value is not None:
                value = _MASK
            elif isinstance(value, Path):
                value = str(value)
            shown[setting.name] = value
        return shown

    def describe(self) -> str:
        """One line: name=value (source), secrets hidden."""
        masked = self.masked()
        return ", ".join(
            f"{name}={masked[name]!s} ({self.sources[name]})" for name in masked
        )


def add_setting_flags(
    parser: argparse.ArgumentParser,
    settings: Sequence[Setting] = SERVE_SETTINGS,
    *,
    config_file: bool = True,
) -> None:
    """A flag per setting, and --config. Unset flags stay None."""
    if config_file:
        parser.add_argument(
            "--config",
            type=Path,
            help=f"a TOML file with a [{_FILE_TABLE}] table (or ${CONFIG_VARIABLE})",
        )
    for setting in settings:
        help_text = f"{setting.help} (${setting.variable})"
        if setting.kind is bool:
            parser.add_argument(
                setting.flag, action="store_const", const=True, help=help_text
            )
        else:
            parser.add_argument(
                setting.flag,
                type=setting.kind,
                choices=setting.choices or None,
                help=help_text,
            )


def resolve(
    flags: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    settings: Sequence[Setting] = SERVE_SETTINGS,
) -> EffectiveConfig:
    """Each setting from its flag, else its variable, else the file, else default."""
    environ = os.environ if environ is None else environ
    file_values, file_name = _read_file(flags, environ, settings)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in settings:
        flag_value = getattr(flags, setting.name, None)
        if flag_value is not None:
            values[setting.name], sources[setting.name] = flag_value, "flag"
        elif environ.get(setting.variable, "") != "":
            raw = environ[setting.variable]
            values[setting.name] = _from_text(setting, raw, setting.variable)
            sources[setting.name] = "env"
        elif setting.name in file_values:
            values[setting.name] = file_values[setting.name]
            sources[setting.name] = f"file {file_name}"
        else:
            values[setting.name], sources[setting.name] = setting.default, "default"
    return EffectiveConfig(values, sources, tuple(settings))


def _read_file(
    flags: argparse.Namespace,
    environ: Mapping[str, str],
    settings: Sequence[Setting],
) -> tuple[dict[str, Any], str]:
    path = getattr(flags, "config", None) or environ.get(CONFIG_VARIABLE) or None
    if path is None:
        return {}, ""
    try:
        document = tomllib.loads(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"Cannot read the config file {path}: {error}.") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}.") from None

    unknown_tables = set(document) - {_FILE_TABLE}
    if unknown_tables:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {', '.join(sorted(unknown_tables))}; "
            f"put the server's settings in a [{_FILE_TABLE}] table."
        )
    table = document.get(_FILE_TABLE, {})
    # Every setting of the table is checked, also those not asked for now
    # (logging is set up before the rest), so that a typo is always an error.
    by_name = {setting.name: setting for setting in (*SERVE_SETTINGS, *settings)}
    unknown = set(table) - set(by_name)
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting(s) {', '.join(sorted(unknown))}; known: "
            f"{', '.join(by_name)}."
        )
    return {
        name: _from_file(by_name[name], value, path) for name, value in table.items()
    }, str(path)


def _from_text(setting: Setting, raw: str, origin: str) -> Any:
    """A setting's value from the text of an environment variable."""
    raw = raw.strip()
    if setting.kind is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(f"{origin}={raw!r}: say true or false.")
    converted = _convert(setting, raw, origin)
    return converted


def _from_file(setting: Setting, value: Any, path: str) -> Any:
    origin = f"{path}: {setting.name}"
    if setting.kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{origin} must be true or false.")
        return value
    if setting.kind in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{origin} must be a number.")
    if setting.kind is float and isinstance(value, int):
        return float(value)
    if setting.kind in (str, Path) and not isinstance(value, str):
        raise ConfigError(f"{origin} must be a string.")
    if setting.kind is int and not isinstance(value, int):
        raise ConfigError(f"{origin} must be a whole number.")
    return _convert(setting, value, origin)


def _convert(setting: Setting, value: Any, origin: str) -> Any:
    convert: Callable[[Any], Any] = setting.kind
    try:
        converted = convert(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{origin}={value!r} is not a valid {setting.kind.__name__}."
        ) from None
    if setting.choices and converted not in setting.choices:
        raise ConfigError(
            f"{origin}={value!r}: choose one of {', '.join(setting.choices)}."
        )
    return converted


#: Settings every command takes (as top-level flags): they set up logging.
LOGGING_SETTINGS = tuple(s for s in SERVE_SETTINGS if s.name.startswith("log_"))
#: The settings that `serve` takes as its own flags.
SERVE_FLAG_SETTINGS = tuple(s for s in SERVE_SETTINGS if s not in LOGGING_SETTINGS)


def server_config(effective: EffectiveConfig) -> ServerConfig:
    """The ServerConfig that an effective `serve` configuration describes."""
    served, follow = _data_or_follow(effective)
    if effective["workers"] < 1:
        raise ConfigError("--workers must be at least 1.")
    return ServerConfig(
        data=served,
        follow=follow,
        listen=effective["listen"],
        metrics_port=effective["metrics_port"],
        metrics_listen=_metrics_host(effective["metrics_listen"]),
        threads=effective["threads"],
        max_open_streams=_max_open_streams(effective),
        reload_interval_seconds=effective["reload_interval"],
        grace_seconds=effective["grace"],
        drain_delay_seconds=effective["drain_delay"],
        policy=CheckPolicy(
            max_batch_hashes=effective["max_batch"],
            pdq_max_batch_hashes=effective["pdq_max_batch"],
            reveal_counts=effective["reveal_counts"],
            **_pdq_distances(effective),
        ),
        access=access_config(
            tls_cert=effective["tls_cert"],
            tls_key=effective["tls_key"],
            client_ca=effective["client_ca"],
            insecure_no_auth=effective["insecure_no_auth"],
            audit=effective["audit"],
            audit_retention_days=effective["audit_retention_days"],
        ),
        signing_key_file=effective["signing_key"],
        quarantine=_quarantine_policy(effective),
    )


def _metrics_host(given: str) -> str:
    """The metrics endpoint's host: a name or an address, without a port."""
    host = given.strip()
    unbracketed = host.removeprefix("[").removesuffix("]")
    if ":" in unbracketed:
        try:
            ipaddress.IPv6Address(unbracketed)
        except ValueError:
            raise ConfigError(
                f"--metrics-listen={given!r}: give the host alone (127.0.0.1, "
                "0.0.0.0, ::); the port is --metrics-port."
            ) from None
    if not unbracketed:
        raise ConfigError("--metrics-listen is empty; give a host such as 127.0.0.1.")
    return unbracketed


def _max_open_streams(effective: EffectiveConfig) -> int | None:
    """The explicit stream cap, checked against the handler threads."""
    requested: int | None = effective["max_open_streams"]
    try:
        open_stream_limit(effective["threads"], requested)
    except ValueError as error:
        raise ConfigError(f"--threads / --max-open-streams: {error}") from None
    return requested


def _quarantine_policy(effective: EffectiveConfig) -> QuarantinePolicy:
    tenants, window = effective["quarantine_tenants"], effective["quarantine_window"]
    if tenants < 0 or window < 0:
        raise ConfigError(
            "--quarantine-tenants and --quarantine-window must be 0 or more "
            "(0 turns the quarantine off)."
        )
    return QuarantinePolicy(tenants=tenants, window_seconds=window)


#: The largest PDQ distance a server may allow (see _pdq_distances).
PDQ_LARGEST_DISTANCE = 64


def _pdq_distances(effective: EffectiveConfig) -> dict[str, int]:
    cap = effective["pdq_max_distance"]
    default = effective["pdq_default_distance"]
    default = cap if default is None else default
    # Random 256-bit hashes are about 128 bits apart; far beyond 64, unrelated
    # hashes would start to match and every check would return many pairs.
    if not 0 <= cap <= PDQ_LARGEST_DISTANCE:
        raise ConfigError(
            f"--pdq-max-distance must be from 0 to {PDQ_LARGEST_DISTANCE} "
            "(the field uses 31)."
        )
    if not 0 <= default <= cap:
        raise ConfigError(
            "--pdq-default-distance must be from 0 to --pdq-max-distance."
        )
    return {"pdq_distance_cap": cap, "pdq_default_distance": default}


def _data_or_follow(effective: EffectiveConfig) -> tuple[Path, bool]:
    """The directory to serve, and whether it is a snapshot root to follow.

    --data or --follow; when both are set, the one from the stronger source.

    So an image may set HASHCHECK_DATA while a replica's command line says
    --follow. Set by the same source, they contradict each other.
    """
    data, follow = effective["data"], effective["follow"]
    if data is None and follow is None:
        raise ConfigError(
            "serve needs --data DIR or --follow ROOT (or HASHCHECK_DATA / "
            "HASHCHECK_FOLLOW, or data / follow in the config file)."
        )
    if data is not None and follow is not None:
        data_rank = _source_rank(effective.sources["data"])
        follow_rank = _source_rank(effective.sources["follow"])
        if data_rank == follow_rank:
            raise ConfigError(
                f"Both data and follow are set ({effective.sources['data']}); "
                "serve either a data directory or a snapshot root."
            )
        return (data, False) if data_rank < follow_rank else (follow, True)
    return (follow, True) if data is None else (data, False)


def _source_rank(source: str) -> int:
    """Lower is stronger: flag, env, file, default."""
    for rank, prefix in enumerate(("flag", "env", "file", "default")):
        if source.startswith(prefix):
            return rank
    raise AssertionError(f"unknown source {source}")


def log_start(effective: EffectiveConfig) -> None:
    """The start and effective-configuration events, one line each."""
    logger.info(
        "hashcheck-server %s starting, pid %d",
        __version__,
        os.getpid(),
        extra={"event": "server_started", "version": __version__},
    )
    logger.info(
        "effective configuration: %s",
        effective.describe(),
        extra={
            "event": "configuration",
            "configuration": effective.masked(),
            "sources": dict(effective.sources),
        },
    )
