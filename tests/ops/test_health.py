"""gRPC health: NOT_SERVING until mapped, SERVING after, NOT_SERVING while draining."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from hashcheck.v1 import hashcheck_pb2_grpc
from hashcheck_server import generation as generation_module
from hashcheck_server.server import RunningServer, ServerConfig, start_server
from ops_support import (
    NOT_SERVING,
    SERVER_CLI,
    SERVING,
    build_store,
    check,
    free_port,
    health_status,
    spawn_server,
    wait_for,
)


def test_not_serving_until_the_table_is_mapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    police = build_store(data, 1_000)
    mapping_may_finish = threading.Event()
    real_load = generation_module.Generation.load

    def slow_load(environment: object) -> generation_module.Generation:
        mapping_may_finish.wait(30)
        return real_load(environment)  # type: ignore[arg-type]

    monkeypatch.setattr(generation_module.Generation, "load", slow_load)
    address = f"127.0.0.1:{free_port()}"
    config = ServerConfig(data=data, listen=address, grace_seconds=1.0)
    started: list[RunningServer] = []
    starting = threading.Thread(
        target=lambda: started.append(start_server(config, CollectorRegistry()))
    )
    starting.start()
    try:
        wait_for(lambda: health_status(address) is not None, timeout=10)
        assert health_status(address) == NOT_SERVING
        with grpc.insecure_channel(address) as channel:
            stub = hashcheck_pb2_grpc.HashCheckStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                check(stub, police[:1], timeout=2)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

            mapping_may_finish.set()
            starting.join(10)

            assert health_status(address) == SERVING
            assert len(check(stub, police[:5]).hit_positions) == 5
    finally:
        mapping_may_finish.set()
        starting.join(10)
        for running in started:
            running.stop(grace_seconds=0.5)


def test_not_serving_during_the_drain_delay_while_still_answering(
    tmp_path: Path,
) -> None:
    police = build_store(tmp_path / "data", 1_000)
    config = ServerConfig(
        data=tmp_path / "data",
        listen="127.0.0.1:0",
        drain_delay_seconds=1.5,
        grace_seconds=1.0,
    )
    running = start_server(config, CollectorRegistry())
    address = f"127.0.0.1:{running.port}"
    assert health_status(address) == SERVING
    draining = threading.Thread(target=running.stop, kwargs={"grace_seconds": 1.0})

    with grpc.insecure_channel(address) as channel:
        stub = hashcheck_pb2_grpc.HashCheckStub(channel)
        draining.start()
        wait_for(lambda: health_status(address) == NOT_SERVING, timeout=1.0)
        # Load balancers see NOT_SERVING and move away; calls still in
        # their way are answered, not refused.
        assert len(check(stub, police[:3]).hit_positions) == 3
        draining.join()
        with pytest.raises(grpc.RpcError):
            check(stub, police[:3], timeout=2)


def test_watchers_see_not_serving_when_draining_starts(tmp_path: Path) -> None:
    build_store(tmp_path / "data", 100)
    config = ServerConfig(data=tmp_path / "data", listen="127.0.0.1:0")
    running = start_server(config, CollectorRegistry())

    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="hashcheck.v1.HashCheck"),
            timeout=10,
        )
        assert next(watch).status == SERVING
        draining = threading.Thread(target=running.stop, kwargs={"grace_seconds": 2})
        draining.start()
        assert next(watch).status == NOT_SERVING
        watch.cancel()
        draining.join()


def test_healthcheck_command_exit_codes(tmp_path: Path, servers: list[object]) -> None:
    build_store(tmp_path / "data", 100)
    server = spawn_server(
        servers,  # type: ignore[arg-type]
        tmp_path,
        "--data",
        str(tmp_path / "data"),
        "--drain-delay",
        "3",
    ).wait_serving()

    def probe() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SERVER_CLI, "healthcheck", "--address", server.address, "--timeout", "2"],
            capture_output=True,
            text=True,
            timeout=30,
        )

    serving = probe()
    server.process.terminate()
    wait_for(lambda: health_status(server.address) == NOT_SERVING, timeout=3)
    draining = probe()
    assert server.stop() == 0
    gone = probe()

    assert (serving.returncode, serving.stdout.strip()) == (
        0,
        f"{server.address}: SERVING",
    )
    assert (draining.returncode, draining.stdout.strip()) == (
        1,
        f"{server.address}: NOT_SERVING",
    )
    assert gone.returncode == 1 and "UNAVAILABLE" in gone.stderr
