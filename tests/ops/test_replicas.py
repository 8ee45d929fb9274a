"""Many machines: the SDK balances over several servers and survives losing one.

Three server processes stand in for three machines. They share the one
store, which they only read, but each writes an audit log of its own.
SO_REUSEPORT on one port would hide which process answers, so each listens
on an address of its own and counts its calls in its own metrics:

- `ipv4:` target: three ports on 127.0.0.1, listed in the target;
- `dns://` target: three loopback addresses (127.0.0.1-3) on one port, and a
  DNS server on loopback (tests/tinydns.py) that resolves one name to all
  three, as a Kubernetes headless Service does.

The SDK's service config chooses round_robin and retries UNAVAILABLE, so calls
spread over every address and, with either target, a killed server costs no
failed call.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hashcheck import Client
from ops_support import (
    ServerProcess,
    build_store,
    free_port,
    metrics_text,
    spawn_server,
)
from synthetic import random_hashes
from tinydns import TinyDNS


def _checks_answered(metrics_port: int, host: str = "127.0.0.1") -> float:
    """Check calls a server answered, from its own metrics (served on its host)."""
    total = 0.0
    for line in metrics_text(metrics_port, host).splitlines():
        if (
            line.startswith("hashcheck_requests_total{")
            and 'method="Check"' in line
            and 'code="OK"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _start_three(
    servers: list[ServerProcess],
    tmp_path: Path,
    hosts: list[str],
    ports: list[int],
) -> list[int]:
    data = tmp_path / "data"
    metrics_ports = [free_port() for _ in hosts]
    for number, (host, port, metrics_port) in enumerate(
        zip(hosts, ports, metrics_ports, strict=True)
    ):
        spawn_server(
            servers,
            tmp_path,
            "--data",
            str(data),
            # An audit log each, as three machines have: one shared by all
            # three would let a dying server's last commit hold up the others'.
            "--audit",
            str(tmp_path / f"audit-{number}"),
            "--metrics-port",
            str(metrics_port),
            "--metrics-listen",
            host,
            host=host,
            port=port,
        )
    for server in servers:
        server.wait_serving()
    return metrics_ports


def _batch(police: np.ndarray) -> bytes:
    return np.concatenate([police[:5], random_hashes(95, seed=6)]).tobytes()


def _check_while_killing(
    client: Client, batch: bytes, victim: ServerProcess
) -> tuple[int, list[Exception]]:
    """Four threads check for 3 s; `victim` gets SIGKILL after 1 s."""
    failures: list[Exception] = []
    answered = 0
    stop = threading.Event()

    def keep_checking() -> None:
        nonlocal answered
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                assert len(client.check_packed(batch, "md5").hits) == 5
                answered += 1
            except Exception as error:  # noqa: BLE001 - every failure counts
                failures.append(error)

    checkers = [threading.Thread(target=keep_checking) for _ in range(4)]
    for checker in checkers:
        checker.start()
    time.sleep(1.0)
    victim.kill()
    time.sleep(2.0)
    stop.set()
    for checker in checkers:
        checker.join()
    return answered, failures


def test_round_robin_spreads_over_three_servers_and_survives_a_kill(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    police = build_store(tmp_path / "data", 1_000)
    ports = [free_port() for _ in range(3)]
    metrics_ports = _start_three(servers, tmp_path, ["127.0.0.1"] * 3, ports)
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
    batch = _batch(police)

    with Client(target, timeout_seconds=10) as client:
        for _ in range(150):
            assert len(client.check_packed(batch, "md5").hits) == 5
        spread = [_checks_answered(port) for port in metrics_ports]
        answered, failures = _check_while_killing(client, batch, servers[1])
        after = [
            _checks_answered(port) for i, port in enumerate(metrics_ports) if i != 1
        ]

    assert sum(spread) == 150
    assert min(spread) >= 30, spread  # round robin: about 50 each
    assert failures == []
    assert answered > 50
    survivors_before = [spread[0], spread[2]]
    assert all(a > b for a, b in zip(after, survivors_before, strict=True))


def test_dns_name_with_three_addresses_spreads_calls_and_survives_a_kill(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    police = build_store(tmp_path / "data", 1_000)
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    port = free_port()
    try:
        metrics_ports = _start_three(servers, tmp_path, hosts, [port] * 3)
    except AssertionError as error:
        if "127.0.0.2" in str(error):
            pytest.skip(f"cannot listen on 127.0.0.2-3 here: {error}")
        raise
    dns = TinyDNS("hashcheck.test", hosts)
    batch = _batch(police)
    try:
        target = f"dns://127.0.0.1:{dns.port}/hashcheck.test:{port}"
        with Client(target, timeout_seconds=10) as client:
            for _ in range(90):
                assert len(client.check_packed(batch, "md5").hits) == 5
            spread = [
                _checks_answered(metrics_port, host)
                for metrics_port, host in zip(metrics_ports, hosts, strict=True)
            ]
            # The name still resolves to the killed server, as a headless
            # Service does until its endpoints update.
            answered, failures = _check_while_killing(client, batch, servers[1])
    finally:
        dns.close()

    assert sum(spread) == 90
    assert min(spread) >= 15, spread
    assert ("hashcheck.test", 1) in dns.queries
    assert failures == []
    assert answered > 50
