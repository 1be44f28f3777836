"""`dfs dev-cluster`: a whole cluster on this machine for trying things out (what `make run` runs)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import click

from dfs.auth import KEY_ENV
from dfs.cli.options import SIZE
from dfs.launcher import Cluster, Mount, http_json
from dfs.protocol import DEFAULT_CHUNK_SIZE, MASTER_PORT


def _give_root_folder(cluster: Cluster, uid: int, gid: int) -> None:
    """A personal cluster: the folder / belongs to whoever runs `make run`, so the tour can write there."""
    if uid:
        http_json("POST", cluster.master_url + "/api/setattr", {"inode": 1, "uid": uid, "gid": gid},
                  key=cluster.admin_key or "")


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
        user_key_file = state / "user.key"
        user_key_made = not user_key_file.exists()
        cluster.stored_key(user_key_file, f"user-{os.getuid()}", os.getuid(), os.getgid(), "rw")
        if user_key_made:
            _give_root_folder(cluster, os.getuid(), os.getgid())
        if mountpoint is not None:
            mount_key = cluster.stored_key(state / "mount.key", "mount", 0, 0, "proxy")
            mount = Mount(cluster.master_url, mountpoint.resolve(), state / "mount.log",
                          env={KEY_ENV: mount_key}).start()
        mounted = f"\n  mount        {mount.mountpoint}" if mount else ""
        auth = 'curl -H "Authorization: Bearer $DFS_KEY"'
        click.echo(f"""
dfs cluster running (state and logs in {state}):
  master       {cluster.master_url}   (DFS_MASTER={cluster.master_url})
  chunkservers {", ".join(s.url for s in cluster.chunkservers)}
  gateway      {gateway}{mounted}
  dashboard    {cluster.master_url}/dashboard/   (sign in with the admin key in {state / "master" / "admin.key"})
  secret       {cluster.secret_file} (chunkservers join with `dfs admin join-token --data {cluster.secret_file.parent}`)
  access keys  {user_key_file} (yours: uid {os.getuid()}, rw), {state / "master" / "admin.key"} (admin)

Try:
  export DFS_KEY=$(cat {user_key_file})
  {auth} -T README.md {gateway}/fs/README.md
  {auth} {gateway}/fs/
  {auth} {gateway}/fs/README.md
  curl {cluster.master_url}/metrics        (Prometheus metrics: every service has them)
  .venv/bin/dfs ls -l /{f"{chr(10)}  ls -l {mount.mountpoint}" if mount else ""}
  .venv/bin/dfs admin status --key-file {state / "master" / "admin.key"}

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
