"""Run the four services as local processes (``make up`` / ``make down``, demo, tests, bench), and the HTTP
front door on top of them when asked (``make up`` does).

    python -m tools.cluster up      # start in the background, wait until every service is SERVING
    python -m tools.cluster status
    python -m tools.cluster down    # SIGTERM: graceful shutdown of each service

Each service is its own ``python -m services.<name>`` process with its own log file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """The Step-Audio recordings: $STEPAUDIO_SHARED_DATA, else ../shared beside the checkout."""
    for candidate in (os.environ.get("STEPAUDIO_SHARED_DATA"), ROOT.parent / "shared" / "data" / "step-audio",
                      "/work/shared/data/step-audio"):  # fmt: skip
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return ROOT.parent / "shared" / "data" / "step-audio"


STAGES = ("tokenizer", "chat", "tts")
# The HTTP service serves its API, WebSocket and /metrics on one port (its port file names it twice).
DEFAULT_PORTS = {
    "gateway": (50051, 9091), "tokenizer": (50052, 9092), "chat": (50053, 9093), "tts": (50054, 9094),
    "http": (8080, 8080),
}  # fmt: skip
SHUTDOWN_ORDER = ("http", "gateway", *STAGES)


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen
    port_file: Path
    log_file: Path
    grpc_port: int = 0
    metrics_port: int = 0
    extra_args: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def is_ready(self) -> bool:
        if self.name == "http":
            return http_ready(f"http://127.0.0.1:{self.grpc_port}")
        return health_status(self.address) == health_pb2.HealthCheckResponse.SERVING


def health_status(address: str, timeout: float = 2.0) -> int:
    """grpc.health.v1 status of ``address`` ("" service), or -1 when unreachable."""
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return -1
    return response.status


def http_ready(base_url: str, timeout: float = 2.0) -> bool:
    """True when the HTTP service's /readyz answers 200 (its gateway is SERVING)."""
    try:
        with urllib.request.urlopen(f"{base_url}/readyz", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class LocalCluster:
    """Starts the stages, then the gateway pointed at them, then (``with_http``) the HTTP service pointed at the
    gateway. ``fixed_ports`` False: free ports."""

    run_dir: Path
    fixed_ports: bool = False
    detached: bool = False  # True: services outlive this process (``make up``)
    with_http: bool = False
    env: dict[str, str] = field(default_factory=dict)
    # Per service (name -> value): another Python interpreter (e.g. .venv-vllm/bin/python for the step-audio
    # profile's chat and tts), extra environment on top of ``env``. Default: this interpreter, ``env`` only.
    python: dict[str, str] = field(default_factory=dict)
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def _spawn(self, name: str, extra_args: list[str], ports: tuple[int, int] | None = None) -> ServiceProcess:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.run_dir / f"{name}.ports"
        port_file.unlink(missing_ok=True)
        log_file = self.run_dir / f"{name}.log"
        grpc_port, metrics_port = ports or (DEFAULT_PORTS[name] if self.fixed_ports else (0, 0))
        ports_args = ["--port", str(grpc_port)] if name == "http" else [
            "--port", str(grpc_port), "--metrics-port", str(metrics_port)
        ]  # fmt: skip
        args = [
            self.python.get(name, sys.executable), "-m", f"services.{name}", *ports_args, "--port-file", str(port_file),
            *extra_args,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env, **self.service_env.get(name, {})}
        if name in self.python:
            env.pop("VIRTUAL_ENV", None)  # the other interpreter's environment, not this one's
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=self.detached
            )
        service = ServiceProcess(name, process, port_file, log_file, extra_args=extra_args)
        self.services[name] = service
        return service

    def _wait_ready(self, service: ServiceProcess, deadline: float) -> None:
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                tail = service.log_file.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{service.name} exited with {service.process.returncode}:\n{tail}")
            if service.port_file.exists() and (text := service.port_file.read_text().split()):
                service.grpc_port, service.metrics_port = int(text[0]), int(text[1])
                if service.is_ready():
                    return
            time.sleep(0.2)
        raise TimeoutError(f"{service.name} did not become SERVING in time; see {service.log_file}")

    def start(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        try:
            for name in STAGES:
                self._spawn(name, [])
            for name in STAGES:
                self._wait_ready(self.services[name], deadline)
            gateway = self._spawn(
                "gateway",
                [
                    "--tokenizer-address", self.services["tokenizer"].address,
                    "--chat-address", self.services["chat"].address,
                    "--tts-address", self.services["tts"].address,
                    "--sessions-dir", str(self.run_dir / "sessions"),
                ],
            )  # fmt: skip
            self._wait_ready(gateway, deadline)
            if self.with_http:
                http = self._spawn("http", ["--gateway-address", gateway.address])
                self._wait_ready(http, deadline)
        except BaseException:
            self.stop()
            raise

    def start_service(self, name: str, extra_args: Sequence[str] = (), timeout: float = 300.0) -> ServiceProcess:
        """Start one service on its own (tests and benchmarks of a single stage); wait until SERVING."""
        service = self._spawn(name, list(extra_args))
        try:
            self._wait_ready(service, time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        return service

    def restart(self, name: str, timeout: float = 120.0) -> ServiceProcess:
        """Start service ``name`` again on the ports it had (after it died or was killed); wait until SERVING."""
        old = self.services[name]
        if old.process.poll() is None:
            raise RuntimeError(f"{name} is still running (pid {old.process.pid})")
        service = self._spawn(name, old.extra_args, ports=(old.grpc_port, old.metrics_port))
        self._wait_ready(service, time.monotonic() + timeout)
        return service

    @property
    def gateway_address(self) -> str:
        return self.services["gateway"].address

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP service (``with_http``), e.g. ``http://127.0.0.1:8080``; the API is under /v1."""
        return f"http://127.0.0.1:{self.services['http'].grpc_port}"

    def stop(self, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every service (HTTP, then gateway, first), wait, SIGKILL what is left; return exit codes."""
        for name in SHUTDOWN_ORDER:
            service = self.services.get(name)
            if service and service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, service in self.services.items():
            try:
                codes[name] = service.process.wait(timeout)
            except subprocess.TimeoutExpired:
                service.process.kill()
                codes[name] = service.process.wait()
        return codes


STATE_FILE = "cluster.json"


def _up(run_dir: Path) -> int:
    cluster = LocalCluster(run_dir, fixed_ports=True, detached=True, with_http=True)
    print("starting tokenizer, chat, tts, gateway, then http (first start assembles the models)...", file=sys.stderr)
    cluster.start()
    state = {
        name: {"pid": s.process.pid, "grpc_port": s.grpc_port, "metrics_port": s.metrics_port, "log": str(s.log_file)}
        for name, s in cluster.services.items()
    }
    (run_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
    for name, entry in state.items():
        if name == "http":
            print(f"{name:<10} http://127.0.0.1:{entry['grpc_port']}  (OpenAI API under /v1, web app at /)")
            continue
        print(
            f"{name:<10} grpc 127.0.0.1:{entry['grpc_port']}  metrics http://127.0.0.1:{entry['metrics_port']}/metrics"
        )
    return 0


def _down(run_dir: Path) -> int:
    state_path = run_dir / STATE_FILE
    if not state_path.exists():
        print("no cluster is recorded as running", file=sys.stderr)
        return 0
    state = json.loads(state_path.read_text())
    for name in SHUTDOWN_ORDER:
        pid = state.get(name, {}).get("pid")
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for entry in state.values():
        for _ in range(150):
            try:
                os.kill(entry["pid"], 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
    state_path.unlink()
    print("stopped", file=sys.stderr)
    return 0


def _status(run_dir: Path) -> int:
    state_path = run_dir / STATE_FILE
    if not state_path.exists():
        print("not running")
        return 1
    for name, entry in json.loads(state_path.read_text()).items():
        if name == "http":
            label = "READY" if http_ready(f"http://127.0.0.1:{entry['grpc_port']}") else "NOT READY"
            print(f"{name:<10} pid {entry['pid']:<8} {label}")
            continue
        status = health_status(f"127.0.0.1:{entry['grpc_port']}")
        label = {-1: "UNREACHABLE"}.get(status) or health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        print(f"{name:<10} pid {entry['pid']:<8} {label}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--run-dir", default=str(ROOT / ".run"))
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    return {"up": _up, "down": _down, "status": _status}[args.action](run_dir)


if __name__ == "__main__":
    sys.exit(main())
