"""Start and stop the processes of a cluster: used by `dfs dev-cluster` (make run) and the tests.

A `Service` is one `python -m dfs ...` process in its own session, logging to a file; `wait_healthy`
polls its /health, `stop` sends SIGTERM then SIGKILL, `kill` is a crash (kill -9).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfs.protocol import DEFAULT_CHUNK_SIZE

STARTUP_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """A small blocking JSON request for tests; returns (status, decoded body)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode(errors="replace")


@dataclass
class Service:
    name: str
    args: list[str]
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, env: dict[str, str] | None = None) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dfs", *self.args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )
        log.close()

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                status, _ = http_json("GET", self.url + "/health", timeout=1.0)
                if status == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not healthy after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """kill -9: no cleanup, as a crash."""
        self.signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Cluster:
    root: Path
    chunk_size: int = DEFAULT_CHUNK_SIZE
    base_port: int | None = None  # None: ephemeral ports (tests); else master, chunkservers from +1, gateway +80
    goal: int = 3
    master_args: list[str] = field(default_factory=list)
    db_url: str | None = None  # the master's --db (None: SQLite in its data folder)
    chunkserver_args: list[str] = field(default_factory=list)  # given to every chunkserver
    master: Service | None = None
    chunkservers: list[Service] = field(default_factory=list)
    gateway: Service | None = None

    @property
    def master_url(self) -> str:
        assert self.master is not None
        return self.master.url

    def _port(self, offset: int) -> int:
        return free_port() if self.base_port is None else self.base_port + offset

    def start_master(self) -> Service:
        if self.master is None:
            port = self._port(0)
            data = self.root / "master"
            data.mkdir(parents=True, exist_ok=True)
            self.master = Service("master", [
                "master", "--data", str(data), "--listen", f"127.0.0.1:{port}",
                "--chunk-size", str(self.chunk_size), "--goal", str(self.goal),
                *(["--db", self.db_url] if self.db_url else []), *self.master_args,
            ], port, self.root / "master.log")
        self.master.start()
        self.master.wait_healthy()
        return self.master

    def add_chunkserver(self, capacity: str | None = None, start: bool = True,
                        args: list[str] | None = None) -> Service:
        index = len(self.chunkservers)
        port = self._port(1 + index)
        data = self.root / f"cs{index}"
        data.mkdir(parents=True, exist_ok=True)
        argv = ["chunkserver", "--master", self.master_url, "--data", str(data), "--listen", f"127.0.0.1:{port}"]
        if capacity:
            argv += ["--capacity", capacity]
        argv += [*self.chunkserver_args, *(args or [])]
        service = Service(f"chunkserver{index}", argv, port, self.root / f"cs{index}.log")
        self.chunkservers.append(service)
        if start:
            service.start()
            service.wait_healthy()
        return service

    def start_gateway(self) -> Service:
        if self.gateway is None:
            port = self._port(80)
            self.gateway = Service("gateway", ["gateway", "--master", self.master_url,
                                               "--listen", f"127.0.0.1:{port}"], port, self.root / "gateway.log")
        self.gateway.start()
        self.gateway.wait_healthy()
        return self.gateway

    def wait_servers(self, count: int, timeout: float = STARTUP_TIMEOUT) -> None:
        """Until the master counts `count` live chunkservers (registration is asynchronous)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = http_json("POST", self.master_url + "/api/statfs", {})
            if status == 200 and body.get("servers_live", 0) >= count:
                return
            time.sleep(0.05)
        raise TimeoutError(f"master sees fewer than {count} live chunkservers")

    def start(self, chunkservers: int = 3, gateway: bool = True) -> Cluster:
        self.start_master()
        for _ in range(chunkservers):
            self.add_chunkserver()
        self.wait_servers(chunkservers)
        if gateway:
            self.start_gateway()
        return self

    def services(self) -> list[Service]:
        return [s for s in [self.gateway, *self.chunkservers, self.master] if s is not None]

    def stop(self) -> None:
        for service in self.services():
            service.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{s.log()}" for s in self.services())

    @property
    def database_url(self) -> str:
        """The master's metadata database (as `dfs master --db` takes it)."""
        return self.db_url or f"sqlite+aiosqlite:///{self.root / 'master' / 'meta.db'}"


def is_mounted(mountpoint: Path) -> bool:
    target = str(mountpoint.resolve())
    with open("/proc/mounts") as mounts:
        return any(len(parts) > 1 and parts[1] == target for parts in (line.split() for line in mounts))


@dataclass
class Mount:
    """A `dfs mount -f` process serving `mountpoint`; `stop()` unmounts, and kills if it must."""

    master_url: str
    mountpoint: Path
    log_path: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = STARTUP_TIMEOUT) -> Mount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dfs", "mount", "-f", "--master", self.master_url, *self.args,
                 str(self.mountpoint)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mount exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.mountpoint} not mounted after {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if is_mounted(self.mountpoint):
            done = subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True, check=False)
            if done.returncode != 0:  # busy: detach now, the kernel finishes when the last user leaves
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True, check=False)
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if is_mounted(self.mountpoint):  # the process died without unmounting
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True, check=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
