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

from dfs import tls
from dfs.auth import KEY_ENV, auth_headers, new_key
from dfs.protocol import DEFAULT_CHUNK_SIZE
from dfs.tokens import SECRET_FILE, ChunkTokens, ClusterKeys, join_token, read_secret_file

STARTUP_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(method: str, url: str, body: Any = None, timeout: float = 10.0, key: str | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A small blocking JSON request for tests; returns (status, decoded body). `key`: the access key
    to send (default $DFS_KEY; "" for none). HTTPS verifies with the process's CA (dfs/tls.py)."""
    data = None if body is None else json.dumps(body).encode()
    key = os.environ.get(KEY_ENV, "") if key is None else key
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **auth_headers(key), **(headers or {})})
    context = tls.client_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode(errors="replace")


def session_admin_key() -> str:
    """An admin key for the clusters this process starts (tests, benchmarks): seed it as each master's
    admin.key (`Cluster(admin_key=...)`); it is also exported as $DFS_KEY, so every client, CLI run,
    gateway caller and mount started from here sends it."""
    key = os.environ.get(KEY_ENV) or new_key()[2]
    os.environ[KEY_ENV] = key
    return key


@dataclass
class Service:
    name: str
    args: list[str]
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)  # given at every start (e.g. DFS_JOIN_TOKEN)
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, env: dict[str, str] | None = None) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dfs", *self.args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env, **(env or {})}, start_new_session=True,
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


@dataclass(frozen=True)
class TlsFiles:
    """A certificate and key every service serves HTTPS with, and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path

    def server_args(self) -> list[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key), "--tls-ca", str(self.ca)]


@dataclass
class Cluster:
    root: Path
    chunk_size: int = DEFAULT_CHUNK_SIZE
    base_port: int | None = None  # None: ephemeral ports (tests); else master, chunkservers from +1, gateway +80
    goal: int = 3
    master_args: list[str] = field(default_factory=list)
    db_url: str | None = None  # the master's --db (None: SQLite in its data folder)
    chunkserver_args: list[str] = field(default_factory=list)  # given to every chunkserver
    admin_key: str | None = None  # seeds DATA/admin.key on first start; then what the master keeps there
    master: Service | None = None
    chunkservers: list[Service] = field(default_factory=list)
    gateway: Service | None = None
    gateway_port: int | None = None  # see plan_gateway
    tls: TlsFiles | None = None  # every service on HTTPS; the CA also becomes this process's default

    def __post_init__(self) -> None:
        if self.tls is not None:
            tls.set_default_ca(self.tls.ca)

    @property
    def scheme(self) -> str:
        return tls.scheme(self.tls is not None)

    def _tls_args(self) -> list[str]:
        return self.tls.server_args() if self.tls else []

    @property
    def secret_file(self) -> Path:
        return self.root / "master" / SECRET_FILE

    def join_token(self) -> str:
        """The chunkservers' credential, from the secret the master made in its data folder."""
        return join_token(read_secret_file(self.secret_file))

    def chunk_tokens(self) -> ChunkTokens:
        """Mints chunk tokens as the master does (for tests that call chunkservers directly)."""
        return ClusterKeys.from_secret(read_secret_file(self.secret_file)).tokens

    def token_header(self, op: str, chunk_id: int, version: int = 0, lifetime: float = 600.0) -> dict[str, str]:
        return self.chunk_tokens().header(op, chunk_id, version, lifetime)

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
            gateway = [] if self.gateway_port is None else ["--gateway-url", f"{self.scheme}://127.0.0.1:{self.gateway_port}"]
            self.master = Service("master", [
                "master", "--data", str(data), "--listen", f"127.0.0.1:{port}",
                "--chunk-size", str(self.chunk_size), "--goal", str(self.goal), *gateway, *self._tls_args(),
                *(["--db", self.db_url] if self.db_url else []), *self.master_args,
            ], port, self.root / "master.log", scheme=self.scheme)
        key_file = self.root / "master" / "admin.key"
        if self.admin_key and not key_file.exists():  # the master adopts a key it finds there
            key_file.touch(mode=0o600)
            key_file.write_text(self.admin_key + "\n")
        self.master.start()
        self.master.wait_healthy()
        with contextlib.suppress(OSError):
            self.admin_key = key_file.read_text().strip() or self.admin_key
        return self.master

    def create_key(self, name: str, uid: int, gid: int, scope: str = "rw", groups: tuple[int, ...] = (),
                   expires: float | None = None) -> str:
        """A new access key, made with the admin key (`dfs admin keys create`)."""
        body: dict[str, Any] = {"name": name, "uid": uid, "gid": gid, "scope": scope, "groups": list(groups)}
        if expires is not None:
            body["expires"] = expires
        status, reply = http_json("POST", self.master_url + "/api/admin/keys/create", body, key=self.admin_key or "")
        if status != 200:
            raise RuntimeError(f"cannot create access key {name!r}: {reply}")
        return str(reply["key"])

    def stored_key(self, path: Path, name: str, uid: int, gid: int, scope: str) -> str:
        """The access key kept in `path` (0600) if the master still takes it, else a new one (named
        `name`, replacing an older key of that name) written there."""
        with contextlib.suppress(OSError):
            key = path.read_text().strip()
            if key and http_json("GET", self.master_url + "/api/whoami", key=key)[0] == 200:
                return key
        http_json("POST", self.master_url + "/api/admin/keys/revoke", {"name": name}, key=self.admin_key or "")
        key = self.create_key(name, uid, gid, scope)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return key

    def add_chunkserver(self, capacity: str | None = None, start: bool = True,
                        args: list[str] | None = None) -> Service:
        index = len(self.chunkservers)
        port = self._port(1 + index)
        data = self.root / f"cs{index}"
        data.mkdir(parents=True, exist_ok=True)
        argv = ["chunkserver", "--master", self.master_url, "--data", str(data), "--listen", f"127.0.0.1:{port}"]
        if capacity:
            argv += ["--capacity", capacity]
        argv += [*self._tls_args(), *self.chunkserver_args, *(args or [])]
        service = Service(f"chunkserver{index}", argv, port, self.root / f"cs{index}.log",
                          env={"DFS_JOIN_TOKEN": self.join_token()}, scheme=self.scheme)
        self.chunkservers.append(service)
        if start:
            service.start()
            service.wait_healthy()
        return service

    def plan_gateway(self) -> int:
        """The gateway's port, chosen before the master starts so that its dashboard links to the gateway."""
        if self.gateway_port is None:
            self.gateway_port = self._port(80)
        return self.gateway_port

    def start_gateway(self) -> Service:
        if self.gateway is None:
            port = self.plan_gateway()
            self.gateway = Service("gateway", ["gateway", "--master", self.master_url, "--listen", f"127.0.0.1:{port}",
                                               *self._tls_args()], port, self.root / "gateway.log", scheme=self.scheme)
        self.gateway.start()
        self.gateway.wait_healthy()
        return self.gateway

    def wait_servers(self, count: int, timeout: float = STARTUP_TIMEOUT) -> None:
        """Until the master counts `count` live chunkservers (registration is asynchronous)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = http_json("POST", self.master_url + "/api/statfs", {}, key=self.admin_key)
            if status == 200 and body.get("servers_live", 0) >= count:
                return
            time.sleep(0.05)
        raise TimeoutError(f"master sees fewer than {count} live chunkservers")

    def start(self, chunkservers: int = 3, gateway: bool = True) -> Cluster:
        if gateway:
            self.plan_gateway()
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
    env: dict[str, str] = field(default_factory=dict)  # e.g. DFS_KEY: the mount's (proxy) access key

    def start(self, timeout: float = STARTUP_TIMEOUT) -> Mount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dfs", "mount", "-f", "--master", self.master_url, *self.args,
                 str(self.mountpoint)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, **self.env},
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
