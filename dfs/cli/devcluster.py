"""`dfs dev-cluster`: a whole cluster on this machine for trying things out (what `make run` runs)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from dfs.cli.options import SIZE
from dfs.launcher import Cluster, Mount
from dfs.protocol import DEFAULT_CHUNK_SIZE, MASTER_PORT


@click.command("dev-cluster")
@click.option("--state", type=click.Path(file_okay=False, path_type=Path), default=Path(".dfs-run"),
              show_default=True, help="Folder for all data and logs; a second run finds the files of the first.")
@click.option("--chunkservers", type=click.IntRange(1, 20), default=3, show_default=True)
@click.option("--chunk-size", type=SIZE, default=str(DEFAULT_CHUNK_SIZE), help="  [default: 64MiB]")
@click.option("--mount", "mountpoint", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also mount the cluster here (needs fuse3).")
@click.option("--base-port", type=click.IntRange(1024, 65000), default=MASTER_PORT, show_default=True,
              help="Master port; chunkservers use the next ones, the gateway base+80.")
def dev_cluster_command(state: Path, chunkservers: int, chunk_size: int, mountpoint: Path | None,
                        base_port: int) -> None:
    """Start a master, chunkservers, a gateway (and a mount) on 127.0.0.1 and run until Ctrl-C."""
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(root=state, chunk_size=chunk_size, goal=min(3, chunkservers), base_port=base_port)
    mount: Mount | None = None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cluster.start(chunkservers=chunkservers, gateway=True)
        gateway = cluster.gateway.url if cluster.gateway else ""
        if mountpoint is not None:
            mount = Mount(cluster.master_url, mountpoint.resolve(), state / "mount.log").start()
        mounted = f"\n  mount        {mount.mountpoint}" if mount else ""
        click.echo(f"""
dfs cluster running (state and logs in {state}):
  master       {cluster.master_url}   (DFS_MASTER={cluster.master_url})
  chunkservers {", ".join(s.url for s in cluster.chunkservers)}
  gateway      {gateway}{mounted}
  dashboard    {cluster.master_url}/dashboard/
  secret       {cluster.secret_file} (chunkservers join with `dfs admin join-token --data {cluster.secret_file.parent}`)

Try:
  curl -T README.md {gateway}/fs/README.md
  curl {gateway}/fs/
  curl {gateway}/fs/README.md
  curl {cluster.master_url}/metrics        (Prometheus metrics: every service has them)
  .venv/bin/dfs ls -l /{f"{chr(10)}  ls -l {mount.mountpoint}" if mount else ""}

Ctrl-C stops everything.""")
        while not stop.wait(1.0):
            dead = [s.name for s in cluster.services() if not s.running]
            if mount is not None and not mount.running:
                dead.append("mount")
            if dead:
                click.echo(f"dfs: {', '.join(dead)} stopped unexpectedly; see the logs in {state}", err=True)
                break
    except (RuntimeError, TimeoutError) as exc:
        click.echo(f"dfs: the cluster did not start: {exc}", err=True)
        raise SystemExit(1) from None
    finally:
        click.echo("stopping the cluster...")
        if mount is not None:
            mount.stop()
        cluster.stop()
