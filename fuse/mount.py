"""`dfs mount` and `dfs umount`: mount the cluster as a local folder with libfuse 3 (mfusepy).

Without `-f` the command returns once the mount is live (a child process serves it and reports
back through a pipe), like `mount` itself. The mount ends cleanly on SIGINT/SIGTERM, `dfs umount`
or `fusermount3 -u`: open files are flushed first.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dfs.cli.options import SIZE, current_key, master_option
from dfs.client.client import Client
from dfs.client.sync import LoopThread
from dfs.errors import DfsError
from dfs.fuse.options import MountOptions
from dfs.launcher import is_mounted
from dfs.units import MiB

log = logging.getLogger("dfs.fuse")

READY = b"ok"
READ_AHEAD_KB = 4096  # the kernel's read-ahead for this mount; it reads 128 KiB at a time otherwise

_thread_state = threading.local()  # per Python thread state: empty again whenever that is new


def keep_thread_state() -> None:
    """Let the calling libfuse thread keep its Python thread state from one callback to the next.

    libfuse's threads are not Python's: ctypes gives each callback a thread state of its own
    (`PyGILState_Ensure`) and deletes it on return, which costs every FUSE request an allocation,
    an mmap and munmap of its frame stack (a TLB shootdown on every CPU) and a gettid, ~15% of the
    mount's CPU in a create. One more `PyGILState_Ensure` here, never released, keeps the count
    above zero, so the state lives as long as the thread (libfuse keeps at most `max_threads`).
    """
    if not getattr(_thread_state, "kept", False):
        ctypes.pythonapi.PyGILState_Ensure()
        _thread_state.kept = True


def fuse_class(observe: Callable[[str, Any, float], None] | None = None) -> type:
    """mfusepy's FUSE, passing rename(2) flags (RENAME_NOREPLACE, RENAME_EXCHANGE) on to us;
    `observe(callback, result, seconds)` is told of every callback (fuse/metrics.py).

    Imported here, not at the top: mfusepy needs libfuse, which only the mount needs.
    """
    import mfusepy

    class DfsFuse(mfusepy.FUSE):
        """Passes what mfusepy drops: rename flags, and the file handle of f-calls (fchmod,
        ftruncate, futimens...), which is all there is for a file that was unlinked while open."""

        def _wrapper(self, func: Any, *args: Any, **kwargs: Any) -> Any:
            keep_thread_state()
            if observe is None:
                return super()._wrapper(func, *args, **kwargs)
            started = time.perf_counter()
            result = super()._wrapper(func, *args, **kwargs)
            observe(func.__name__, result, time.perf_counter() - started)
            return result

        def _path(self, path: bytes | None) -> str | None:
            return None if path is None else path.decode(self.encoding, self.errors)

        @staticmethod
        def _handle(fip: Any) -> int | None:
            return fip.contents.fh if fip else None

        def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
            return self.operations.rename(self._path(old), self._path(new), flags)

        def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
            return self.operations.truncate(self._path(path), length, self._handle(fip))

        def chmod_fuse_3(self, path: bytes | None, mode: int, fip: Any) -> int:
            return self.operations.chmod(self._path(path), mode, self._handle(fip))

        def chown_fuse_3(self, path: bytes | None, uid: int, gid: int, fip: Any) -> int:
            uid = -1 if ctypes.c_uint32(uid + 1).value == 0 else uid
            gid = -1 if ctypes.c_uint32(gid + 1).value == 0 else gid
            return self.operations.chown(self._path(path), uid, gid, self._handle(fip))

        def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
            times = None
            if buf:
                times = tuple(t.tv_sec * 10**9 + t.tv_nsec for t in (buf.contents.actime, buf.contents.modtime))
            return self.operations.utimens(self._path(path), times, self._handle(fip))

    return DfsFuse


def raise_read_ahead(mountpoint: Path) -> None:
    """Ask the kernel for large read-ahead on this mount (root only; best effort)."""
    try:
        dev = os.stat(mountpoint).st_dev
        path = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
        path.write_text(str(READ_AHEAD_KB))
    except OSError as exc:
        log.debug("could not raise read-ahead on %s: %s", mountpoint, exc)


def serve(master_url: str, mountpoint: Path, options: MountOptions, fuse_options: dict[str, Any],
          retry_for: float, on_ready: Any = None, key: str = "") -> None:
    """Mount and serve until unmounted (blocks)."""
    from dfs.fuse.operations import DfsOperations

    loop = LoopThread()
    client = Client(master_url, retry_for=retry_for, key=key, short_circuit=options.short_circuit)
    client.umask = 0  # the kernel has applied the caller's umask already
    try:
        loop.run(client.start())
        me = loop.run(client.whoami())  # fails at once on a missing or refused key
    except BaseException:
        loop.run(client.close())
        loop.stop()
        raise
    act_for_callers = bool(me.get("may_act_for_others"))
    name = (me.get("key") or {}).get("name", "(none)")
    if act_for_callers:
        log.info("access key %r: calls carry each caller's uid, gid and groups", name)
    else:
        log.info("access key %r (scope %s) cannot act for others: every call is made as uid %s", name,
                 me.get("scope"), me.get("uid"))
    ops = DfsOperations(client, loop, options, act_for_callers)

    def ready() -> None:
        """libfuse's init ran: wait until the kernel shows the mount, then tune it and report."""

        def after_mount() -> None:
            deadline = time.monotonic() + 30
            while not is_mounted(mountpoint):
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)
            raise_read_ahead(mountpoint)
            if on_ready is not None:
                on_ready()

        threading.Thread(target=after_mount, daemon=True).start()

    ops.on_ready = ready  # type: ignore[attr-defined]
    stop_metrics = None
    try:
        observe = None
        if options.metrics_port is not None:
            from dfs.fuse.metrics import FuseObserver, serve_metrics

            stop_metrics = serve_metrics(options.metrics_port, ops)
            observe = FuseObserver()
            log.info("metrics on http://127.0.0.1:%d/metrics", options.metrics_port)
        log.info("mounting %s at %s", master_url, mountpoint)
        fuse_class(observe)(ops, str(mountpoint), foreground=True, raw_fi=True, **fuse_options)
    finally:
        log.info("unmounted %s", mountpoint)
        if stop_metrics is not None:
            stop_metrics()
        loop.run(client.close())
        loop.stop()


def _daemonize(log_file: Path | None) -> tuple[int, int]:
    """Fork; the parent gets (child pid, read end), the child (0, write end) in a new session."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        return pid, read_end
    os.close(read_end)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if log_file else devnull
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    return 0, write_end


def _wait_for_child(pid: int, read_end: int, mountpoint: Path) -> int:
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read()
    if message.startswith(READY):
        return 0
    _, status = os.waitpid(pid, 0)
    text = message.decode(errors="replace").strip() or f"the mount process exited with {status}"
    click.echo(f"dfs: cannot mount '{mountpoint}': {text}", err=True)
    return 1


@click.command("mount")
@master_option
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground (logs to stderr).")
@click.option("-o", "extra", multiple=True, help="FUSE options, e.g. -o allow_other.")
@click.option("--allow-other", is_flag=True, help="Let other users use the mount (needs user_allow_other).")
@click.option("--read-only", is_flag=True, help="Refuse every change (EROFS).")
@click.option("--attr-timeout", type=click.FloatRange(0, 3600), default=1.0, show_default=True,
              help="Seconds the kernel and the mount may cache attributes.")
@click.option("--entry-timeout", type=click.FloatRange(0, 3600), default=1.0, show_default=True,
              help="Seconds the kernel and the mount may cache names.")
@click.option("--write-buffer", type=SIZE, default="8MiB", help="Bytes gathered per open file before sending.  "
              "[default: 8MiB]")
@click.option("--read-ahead", type=SIZE, default="8MiB", help="Bytes fetched ahead of sequential reads.  "
              "[default: 8MiB]")
@click.option("--memory-cap", type=SIZE, default="256MiB", help="Most bytes all buffers may hold.  [default: 256MiB]")
@click.option("--master-timeout", type=click.FloatRange(0, 3600), default=30.0, show_default=True,
              help="Seconds calls wait for an unreachable master before failing with EIO.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where the background mount logs (default: nowhere).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Serve Prometheus metrics on http://127.0.0.1:PORT/metrics (default: none).")
@click.option("--short-circuit/--no-short-circuit", envvar="DFS_SHORT_CIRCUIT", default=True, show_default=True,
              show_envvar=True, help="Read replicas on this host straight from their files (handed over by their "
                                     "chunkserver), not over HTTP.")
@click.option("--delegations/--no-delegations", envvar="DFS_DELEGATIONS", default=True, show_default=True,
              show_envvar=True, help="Create and remove files in folders this mount made without waiting for the "
                                     "master (docs/PROTOCOL.md \"Folder delegations\"; needs a proxy or admin key).")
def mount_command(master_url: str, mountpoint: Path, foreground: bool, extra: tuple[str, ...], allow_other: bool,
                  read_only: bool, attr_timeout: float, entry_timeout: float, write_buffer: int, read_ahead: int,
                  memory_cap: int, master_timeout: float, log_file: Path | None, metrics_port: int | None,
                  short_circuit: bool, delegations: bool) -> None:
    """Mount the cluster at MOUNTPOINT.

    \b
    /etc/fstab:  http://127.0.0.1:9400  /mnt/dfs  fuse.dfs-mount  _netdev,allow_other,key_file=/etc/dfs/mount.key  0 0
    """
    if not mountpoint.is_dir():
        raise click.UsageError(f"mount point '{mountpoint}' is not a folder")
    if is_mounted(mountpoint):
        raise click.UsageError(f"'{mountpoint}' is already a mount point")
    if write_buffer < MiB or memory_cap < 2 * write_buffer:
        raise click.UsageError("--write-buffer must be at least 1MiB and --memory-cap at least twice it")
    options = MountOptions(attr_timeout=attr_timeout, entry_timeout=entry_timeout, write_buffer=write_buffer,
                           read_ahead=read_ahead, memory_cap=memory_cap, read_only=read_only,
                           metrics_port=metrics_port, short_circuit=short_circuit, delegations=delegations)
    fuse_options: dict[str, Any] = {"fsname": "dfs", "subtype": "dfs", "default_permissions": True, "use_ino": True}
    if allow_other:
        fuse_options["allow_other"] = True
    if read_only:
        fuse_options["ro"] = True
    for item in extra:
        for opt in item.split(","):
            key, _, value = opt.partition("=")
            fuse_options[key] = value or True
    mountpoint = mountpoint.resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s mount %(levelname)s %(name)s: %(message)s")
    if foreground:
        _serve_or_exit(master_url, mountpoint, options, fuse_options, master_timeout, None, current_key())
        return
    key = current_key()
    pid, fd = _daemonize(log_file)
    if pid:
        raise SystemExit(_wait_for_child(pid, fd, mountpoint))
    _serve_or_exit(master_url, mountpoint, options, fuse_options, master_timeout, fd, key)


#: glibc's mallopt parameters (malloc.h).
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def keep_rss_near_buffers() -> None:
    """Let the mount's RSS follow what its buffers hold (--memory-cap), not what they once held.

    glibc raises its mmap threshold each time a big block is freed, so after the first 8 MiB write
    buffer new ones come from the heap, and every FUSE thread's arena keeps its freed buffers: 4
    parallel writers peaked at 264 MiB of RSS for ~100 MiB of buffers, a 1 GiB write at 162 MiB.
    Blocks of 4 MiB and more mapped on their own (unmapped at free) and two arenas: 160 and 82 MiB.
    A lower threshold (256 KiB) keeps the same peaks but maps and faults in every 1 MiB FUSE write
    (seq write 340 -> 270 MB/s, parallel 420 -> 230); 4 MiB costs ~10% of the parallel figure.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024)
        libc.mallopt(M_ARENA_MAX, 2)


def _serve_or_exit(master_url: str, mountpoint: Path, options: MountOptions, fuse_options: dict[str, Any],
                   master_timeout: float, report_fd: int | None, key: str) -> None:
    keep_rss_near_buffers()
    def report(message: bytes) -> None:
        if report_fd is not None:
            with contextlib.suppress(OSError):
                os.write(report_fd, message)
                os.close(report_fd)

    try:
        serve(master_url, mountpoint, options, fuse_options, master_timeout, on_ready=lambda: report(READY), key=key)
    except DfsError as err:
        report(err.message.encode())
        click.echo(f"dfs: cannot mount '{mountpoint}': {err.message}", err=True)
        raise SystemExit(1) from None
    except RuntimeError as err:
        report(f"libfuse refused the mount ({err})".encode())
        raise SystemExit(1) from None


@click.command("umount")
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option("-l", "--lazy", is_flag=True, help="Detach now, finish when no longer busy.")
def umount_command(mountpoint: Path, lazy: bool) -> None:
    """Unmount a dfs mount (open files are flushed first)."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    args = [tool, "-u", *(["-z"] if lazy else []), str(mountpoint)] if tool else ["umount", str(mountpoint)]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        click.echo(f"dfs: cannot unmount '{mountpoint}': {done.stderr.strip() or 'failed'}", err=True)
        sys.exit(1)


def fstab_main() -> None:
    """`dfs-mount SOURCE MOUNTPOINT -o OPTIONS`: what mount(8) runs for a `fuse.dfs-mount` fstab line."""
    args = sys.argv[1:]
    if len(args) < 2:
        sys.exit("usage: dfs-mount MASTER_URL MOUNTPOINT [-o OPTIONS]")
    source, target, rest = args[0], args[1], args[2:]
    extra: list[str] = []
    if "-o" in rest:
        extra = [o for o in rest[rest.index("-o") + 1].split(",") if o not in ("rw", "_netdev", "defaults", "auto",
                                                                               "noauto", "user", "nouser")]
    keys = [x for o in extra if o.startswith("key_file=") for x in ("--key-file", o.partition("=")[2])]
    extra = [o for o in extra if not o.startswith("key_file=")]
    mount_command.main(["--master", source, *keys, target, *[x for o in extra for x in ("-o", o)]],
                       prog_name="dfs-mount")
