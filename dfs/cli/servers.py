"""`dfs master`, `dfs chunkserver`, `dfs gateway`: run one service in the foreground."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from dfs.cli.options import (
    HTTP_URL,
    LISTEN,
    SIZE,
    check_tls_pair,
    current_key,
    master_option,
    master_url_option,
    tls_ca_option,
    tls_server_options,
)
from dfs.protocol import (
    CHUNKSERVER_PORT,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_GOAL,
    GATEWAY_PORT,
    MASTER_PORT,
    MAX_GOAL,
    MAX_RESIDENT,
)
from dfs.web import setup_logging

log_level_option = click.option(
    "--log-level", envvar="DFS_LOG_LEVEL", default="INFO", show_default=True, show_envvar=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)


@click.command("master")
@click.option("--data", "data_dir", envvar="DFS_DATA", required=True, show_envvar=True,
              type=click.Path(file_okay=False, path_type=Path), help="Folder for the metadata database and secrets.")
@click.option("--listen", envvar="DFS_LISTEN", default=f"127.0.0.1:{MASTER_PORT}", show_default=True,
              show_envvar=True, type=LISTEN, help="Address to serve on.")
@click.option("--db", "db_url", envvar="DFS_DB", default=None, show_envvar=True,
              help="SQLAlchemy async URL [default: sqlite+aiosqlite:///DATA/meta.db].")
@click.option("--chunk-size", envvar="DFS_CHUNK_SIZE", default=str(DEFAULT_CHUNK_SIZE), type=SIZE,
              show_envvar=True, help="Chunk size of new files, e.g. 64MiB.  [default: 64MiB]")
@click.option("--goal", envvar="DFS_GOAL", default=DEFAULT_GOAL, show_default=True, show_envvar=True,
              type=click.IntRange(1, MAX_GOAL), help="Default number of replicas of each chunk.")
@click.option("--resident-max", envvar="DFS_RESIDENT_MAX", default="64KiB", type=SIZE, show_envvar=True,
              help="Files written whole up to this size keep their data in the metadata database instead of "
                   "on chunkservers (at most the chunk size); 0: never  [default: 64KiB]")
@click.option("--dead-timeout", envvar="DFS_DEAD_TIMEOUT", default=30.0, show_default=True, show_envvar=True,
              type=click.FloatRange(1, 86400), help="Seconds without heartbeat before a chunkserver is dead.")
@click.option("--gc-grace", envvar="DFS_GC_GRACE", default=0.0, show_default=True, show_envvar=True,
              type=click.FloatRange(0, 30 * 86400), help="Seconds deleted chunks wait before removal.")
@click.option("--heartbeat-interval", envvar="DFS_HEARTBEAT_INTERVAL", default=2.0, show_default=True,
              show_envvar=True, type=click.FloatRange(0.05, 600), help="Seconds between chunkserver heartbeats.")
@click.option("--maintenance-timeout", envvar="DFS_MAINTENANCE_TIMEOUT", default=300.0, show_default=True,
              show_envvar=True, type=click.FloatRange(0, 7 * 86400),
              help="Seconds a chunkserver stopped gracefully (SIGTERM) is waited for before it counts as dead.")
@click.option("--lease-seconds", envvar="DFS_LEASE_SECONDS", default=60.0, show_default=True, show_envvar=True,
              type=click.FloatRange(1, 3600), help="Lifetime of a write lease; an expired one is recovered.")
@click.option("--recall-timeout", envvar="DFS_RECALL_TIMEOUT", default=10.0, show_default=True, show_envvar=True,
              type=click.FloatRange(0.1, 600), help="Seconds a client may take to give back a folder delegated to it "
                                                     "before the master takes it back (docs/PROTOCOL.md).")
@click.option("--repair-bandwidth", envvar="DFS_REPAIR_BANDWIDTH", default="256MiB", type=SIZE, show_envvar=True,
              help="Bytes per second re-replication may copy, cluster-wide; 0: unlimited  [default: 256MiB]")
@click.option("--repair-concurrency", envvar="DFS_REPAIR_CONCURRENCY", default=2, show_default=True,
              show_envvar=True, type=click.IntRange(1, 64),
              help="Copies one chunkserver takes part in at once (as source or target).")
@click.option("--secret-file", envvar="DFS_SECRET_FILE", default=None, show_envvar=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The cluster secret (mode 0600)  [default: DATA/cluster.secret, made on first start]")
@click.option("--token-lifetime", envvar="DFS_TOKEN_LIFETIME", default=600.0, show_default=True, show_envvar=True,
              type=click.FloatRange(5, 86400), help="Seconds a chunk read token stays valid (writes: the lease's).")
@click.option("--gateway-url", envvar="DFS_GATEWAY_URL", default=None, show_envvar=True, type=HTTP_URL,
              help="Public URL of the HTTP gateway: the dashboard's download links point there.")
@click.option("--insecure", envvar="DFS_INSECURE", is_flag=True, show_envvar=True,
              help="Require no access keys: every caller acts as root. Local experiments only.")
@click.option("--upgrade-db", is_flag=True, default=False,
              help="Migrate the metadata database to this version's schema, then exit.")
@tls_server_options
@tls_ca_option
@log_level_option
def master_command(data_dir: Path, listen: tuple[str, int], db_url: str | None, chunk_size: int, goal: int,
                   resident_max: int, dead_timeout: float, gc_grace: float, heartbeat_interval: float,
                   maintenance_timeout: float, lease_seconds: float, recall_timeout: float,
                   repair_bandwidth: int, repair_concurrency: int, secret_file: Path | None,
                   token_lifetime: float, gateway_url: str | None, insecure: bool, upgrade_db: bool,
                   tls_cert: Path | None, tls_key: Path | None, log_level: str) -> None:
    """Run the metadata master."""
    from dfs.master.config import MasterConfig
    from dfs.master.service import run_master, upgrade_database

    if chunk_size < 64 * 1024 or chunk_size % (64 * 1024):
        raise click.BadParameter("must be a multiple of 64KiB", param_hint="--chunk-size")
    if resident_max > min(chunk_size, MAX_RESIDENT):
        raise click.BadParameter(f"must be at most the chunk size and {MAX_RESIDENT // 1024}KiB",
                                 param_hint="--resident-max")
    check_tls_pair(tls_cert, tls_key)
    setup_logging("master", log_level)
    config = MasterConfig(data_dir=data_dir, host=listen[0], port=listen[1], db_url=db_url,
                          chunk_size=chunk_size, goal=goal, resident_max=resident_max, dead_timeout=dead_timeout,
                          gc_grace=gc_grace,
                          heartbeat_interval=heartbeat_interval, maintenance_timeout=maintenance_timeout,
                          lease_seconds=lease_seconds, recall_timeout=recall_timeout,
                          repair_bandwidth=repair_bandwidth,
                          repair_concurrency=repair_concurrency, secret_file=secret_file,
                          token_lifetime=token_lifetime, tls_cert=tls_cert, tls_key=tls_key,
                          gateway_url=gateway_url, insecure=insecure)
    asyncio.run(upgrade_database(config) if upgrade_db else run_master(config))


@click.command("chunkserver")
@master_url_option
@tls_ca_option
@click.option("--data", "data_dirs", envvar="DFS_DATA", required=True, multiple=True, show_envvar=True,
              type=click.Path(file_okay=False, path_type=Path), help="Folder for chunks; repeat for several disks.")
@click.option("--listen", envvar="DFS_LISTEN", default=f"127.0.0.1:{CHUNKSERVER_PORT}", show_default=True,
              show_envvar=True, type=LISTEN, help="Address to serve on.")
@click.option("--capacity", envvar="DFS_CAPACITY", default=None, type=SIZE, show_envvar=True,
              help="Bytes to offer (e.g. 1GiB)  [default: the size of the disks]")
@click.option("--public-url", envvar="DFS_PUBLIC_URL", default=None, show_envvar=True,
              help="URL other nodes use to reach this one [default: http://LISTEN].")
@click.option("--scrub-rate", envvar="DFS_SCRUB_RATE", default="50MiB", type=SIZE, show_envvar=True,
              help="Bytes per second the scrubber re-verifies; 0 disables it  [default: 50MiB]")
@click.option("--scrub-interval", envvar="DFS_SCRUB_INTERVAL", default=600.0, show_default=True, show_envvar=True,
              type=click.FloatRange(0, 30 * 86400), help="Seconds from one scrub pass's start to the next's, at least.")
@click.option("--join-token", envvar="DFS_JOIN_TOKEN", default=None, show_envvar=True,
              help="The cluster's join token (`dfs admin join-token`); or give --secret-file.")
@click.option("--secret-file", envvar="DFS_SECRET_FILE", default=None, show_envvar=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The cluster secret file (mode 0600), instead of --join-token.")
@click.option("--short-circuit/--no-short-circuit", default=True, show_default=True,
              help="Hand chunk files to clients on this host over a Unix socket (local.sock in the first --data "
                   "folder), so that they read them directly.")
@tls_server_options
@log_level_option
def chunkserver_command(master_url: str, data_dirs: tuple[Path, ...], listen: tuple[str, int],
                        capacity: int | None, public_url: str | None, scrub_rate: int, scrub_interval: float,
                        join_token: str | None, secret_file: Path | None, short_circuit: bool,
                        tls_cert: Path | None, tls_key: Path | None, log_level: str) -> None:
    """Run a chunkserver that stores chunks in the --data folders."""
    from dfs.chunkserver.config import ChunkserverConfig
    from dfs.chunkserver.service import run_chunkserver
    from dfs.tokens import ClusterKeys, SecretError, read_secret_file

    check_tls_pair(tls_cert, tls_key)
    if (join_token is None) == (secret_file is None):
        raise click.UsageError("give the cluster's --join-token (or DFS_JOIN_TOKEN) or its --secret-file")
    try:
        keys = ClusterKeys.from_join_token(join_token) if join_token else \
            ClusterKeys.from_secret(read_secret_file(secret_file))  # type: ignore[arg-type]
    except SecretError as exc:
        raise click.UsageError(str(exc)) from None
    setup_logging("chunkserver", log_level)
    config = ChunkserverConfig(data_dirs=list(data_dirs), master_url=master_url.rstrip("/"), host=listen[0],
                               port=listen[1], capacity=capacity, public_url=public_url, scrub_rate=scrub_rate,
                               scrub_interval=scrub_interval, keys=keys, tls_cert=tls_cert, tls_key=tls_key,
                               short_circuit=short_circuit)
    asyncio.run(run_chunkserver(config))


@click.command("gateway")
@master_option
@click.option("--listen", envvar="DFS_LISTEN", default=f"127.0.0.1:{GATEWAY_PORT}", show_default=True,
              show_envvar=True, type=LISTEN, help="Address to serve on.")
@click.option("--max-upload", envvar="DFS_MAX_UPLOAD", default="1TiB", type=SIZE, show_envvar=True,
              help="Largest body accepted by PUT and POST  [default: 1TiB]")
@click.option("--insecure", envvar="DFS_INSECURE", is_flag=True, show_envvar=True,
              help="Serve callers without an access key (with this gateway's own --key, if any). Experiments only.")
@tls_server_options
@log_level_option
def gateway_command(master_url: str, listen: tuple[str, int], max_upload: int, insecure: bool, tls_cert: Path | None,
                    tls_key: Path | None, log_level: str) -> None:
    """Run the HTTP gateway: the file system over plain HTTP (curl is enough).

    Callers send their access key (curl -H "Authorization: Bearer $DFS_KEY", or -u name:KEY); the
    gateway passes it on to the master, which checks it and the permissions of its uid.
    """
    from dfs import tls
    from dfs.gateway.service import run_gateway

    check_tls_pair(tls_cert, tls_key)
    try:
        context = tls.server_context(tls_cert, tls_key) if tls_cert and tls_key else None
    except tls.TlsError as exc:
        raise click.UsageError(str(exc)) from None
    setup_logging("gateway", log_level)
    asyncio.run(run_gateway(master_url.rstrip("/"), listen[0], listen[1], max_upload=max_upload,
                            insecure=insecure, key=current_key(), ssl_context=context))
