"""Configuration: flags > HASHCHECK_* variables > the TOML file > defaults."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from hashcheck_server.cli import _build_parser
from hashcheck_server.config import (
    ConfigError,
    EffectiveConfig,
    Setting,
    resolve,
    server_config,
)
from ops_support import (
    SERVER_CLI,
    ServerProcess,
    build_store,
    free_port,
    health_status,
    wait_for,
)


def _resolve(
    arguments: list[str], environ: dict[str, str] | None = None
) -> EffectiveConfig:
    args = _build_parser().parse_args(["serve", *arguments])
    return resolve(args, environ or {})


def test_each_source_overrides_the_weaker_ones(tmp_path: Path) -> None:
    config_file = tmp_path / "hashcheck.toml"
    config_file.write_text(
        "[serve]\n"
        'listen = "127.0.0.1:7001"\n'
        "threads = 3\n"
        "grace = 4\n"
        "reveal_counts = true\n"
        'data = "/from/file"\n'
    )
    environ = {
        "HASHCHECK_CONFIG": str(config_file),
        "HASHCHECK_LISTEN": "127.0.0.1:7002",
        "HASHCHECK_THREADS": "5",
    }

    effective = _resolve(["--listen", "127.0.0.1:7003"], environ)

    assert effective["listen"] == "127.0.0.1:7003"
    assert effective["threads"] == 5
    assert effective["grace"] == 4.0
    assert effective["reveal_counts"] is True
    assert effective["workers"] == 1
    assert effective["data"] == Path("/from/file")
    assert effective.sources["listen"] == "flag"
    assert effective.sources["threads"] == "env"
    assert effective.sources["grace"] == f"file {config_file}"
    assert effective.sources["workers"] == "default"
    config = server_config(effective)
    assert (config.threads, config.grace_seconds, config.policy.reveal_counts) == (
        5,
        4.0,
        True,
    )


def test_follow_from_a_flag_beats_data_from_the_environment() -> None:
    effective = _resolve(["--follow", "/snapshots"], {"HASHCHECK_DATA": "/data"})

    config = server_config(effective)

    assert (config.follow, config.data) == (True, Path("/snapshots"))
    with pytest.raises(ConfigError, match="Both data and follow"):
        server_config(_resolve(["--follow", "/s", "--data", "/d"]))
    with pytest.raises(ConfigError, match="needs --data DIR or --follow ROOT"):
        server_config(_resolve([]))


@pytest.mark.parametrize(
    ("environ", "toml", "fragment"),
    [
        pytest.param(
            {"HASHCHECK_WORKERS": "two"}, "", "HASHCHECK_WORKERS='two'", id="env-int"
        ),
        pytest.param(
            {"HASHCHECK_REVEAL_COUNTS": "maybe"}, "", "true or false", id="env-bool"
        ),
        pytest.param(
            {"HASHCHECK_LOG_FORMAT": "xml"}, "", "choose one of", id="env-choice"
        ),
        pytest.param({}, "[serve]\nthreds = 3\n", "unknown setting", id="file-typo"),
        pytest.param({}, "listen = 'x'\n", "[serve] table", id="file-top-level"),
        pytest.param({}, "[serve]\nthreads = '3'\n", "whole number", id="file-type"),
        pytest.param({}, "[serve\n", "not valid TOML", id="file-syntax"),
    ],
)
def test_unusable_settings_are_refused_with_a_reason(
    tmp_path: Path, environ: dict[str, str], toml: str, fragment: str
) -> None:
    if toml:
        (tmp_path / "c.toml").write_text(toml)
        environ = {**environ, "HASHCHECK_CONFIG": str(tmp_path / "c.toml")}

    with pytest.raises(ConfigError) as refused:
        _resolve(["--data", "/d"], environ)

    assert fragment in str(refused.value)


def test_secrets_are_masked_in_what_is_logged() -> None:
    settings = (
        Setting("listen", str, "127.0.0.1:1", "address"),
        Setting("admin_token", str, None, "a secret", secret=True),
    )
    args = _build_parser().parse_args(["serve"])

    effective = resolve(args, {"HASHCHECK_ADMIN_TOKEN": "s3cr3t"}, settings=settings)

    assert effective["admin_token"] == "s3cr3t"
    assert effective.masked() == {"listen": "127.0.0.1:1", "admin_token": "***"}
    assert "s3cr3t" not in effective.describe()


def test_serve_from_environment_and_file_logs_the_effective_configuration(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    build_store(tmp_path / "data", 10)
    port = free_port()
    (tmp_path / "c.toml").write_text(f'[serve]\nlisten = "127.0.0.1:{port}"\n')
    # No --listen: the file's listen must be the one used.
    server = ServerProcess(
        [],
        f"127.0.0.1:{port}",
        tmp_path / "server.log",
        env={
            "HASHCHECK_CONFIG": str(tmp_path / "c.toml"),
            "HASHCHECK_DATA": str(tmp_path / "data"),
            "HASHCHECK_MAX_BATCH": "1234",
        },
    )
    servers.append(server)
    server.wait_serving()
    wait_for(lambda: "listening on" in server.log())
    events = [json.loads(line) for line in server.log().splitlines() if line]

    (configuration,) = [e for e in events if e.get("event") == "configuration"]
    assert configuration["configuration"]["max_batch"] == 1234
    assert configuration["sources"]["max_batch"] == "env"
    assert configuration["sources"]["listen"] == f"file {tmp_path / 'c.toml'}"
    assert [e for e in events if e.get("event") == "server_started"]
    assert [e for e in events if e.get("event") == "generation_switch"]
    assert health_status(server.address) is not None


def test_bad_setting_exits_2_with_one_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [SERVER_CLI, "serve", "--data", str(tmp_path)],
        env={"HASHCHECK_WORKERS": "two", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "HASHCHECK_WORKERS='two'" in result.stderr
    assert "Traceback" not in result.stderr


def test_metrics_listen_defaults_to_loopback_whatever_listen_says() -> None:
    default = server_config(_resolve(["--data", "/d", "--listen", "0.0.0.0:50051"]))
    from_env = server_config(
        _resolve(["--data", "/d"], {"HASHCHECK_METRICS_LISTEN": "[::]"})
    )

    assert default.metrics_listen == "127.0.0.1"
    assert from_env.metrics_listen == "::"


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0:9090", "localhost:9090", " "],
    ids=["ip-port", "name-port", "empty"],
)
def test_metrics_listen_with_a_port_or_nothing_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="--metrics-listen"):
        server_config(_resolve(["--data", "/d", "--metrics-listen", host]))


def test_max_open_streams_must_leave_a_thread_for_unary_calls() -> None:
    derived = server_config(_resolve(["--data", "/d", "--threads", "8"]))
    given = server_config(
        _resolve(
            ["--data", "/d"],
            {"HASHCHECK_MAX_OPEN_STREAMS": "7", "HASHCHECK_THREADS": "8"},
        )
    )

    assert derived.max_open_streams is None and given.max_open_streams == 7
    with pytest.raises(ConfigError, match="--max-open-streams: 8 open streams"):
        server_config(
            _resolve(["--data", "/d", "--threads", "8", "--max-open-streams", "8"])
        )
    with pytest.raises(ConfigError, match="at least 2 threads"):
        server_config(_resolve(["--data", "/d", "--threads", "1"]))
