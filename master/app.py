"""The master's HTTP face: `POST /api/<op>` for every operation of docs/PROTOCOL.md, `GET /api/status`.

Handlers only read and check the request, call the domain modules and shape the reply.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from dfs import tls
from dfs.apispec import checked
from dfs.errors import DfsError
from dfs.limits import INT64_MAX, LIST_DEFAULT, LIST_MAX, UID_MAX
from dfs.master import api_schema, inode_ids
from dfs.master.admin_api import add_admin_routes, add_openapi
from dfs.master.api_schema import MAX_REPORTED_CHUNKS, MAX_RESIDENT_EXTENTS
from dfs.master.auth import INSECURE_WARNING, KEYS, add_auth, auth_middleware, caller_of
from dfs.master.batch import MAX_CHANGES, Change, DirBatch
from dfs.master.channel import add_channel
from dfs.master.config import MasterConfig
from dfs.master.dashboard import add_dashboard_routes
from dfs.master.db import Database
from dfs.master.delegations import MAX_WAIT, Delegations, connection_alive
from dfs.master.inode_ids import Reservations
from dfs.master.keys import KeyStore
from dfs.master.leases import LeaseTable
from dfs.master.metrics import add_master_metrics
from dfs.master.namespace import Namespace, attr_json
from dfs.master.permissions import ROOT, Caller
from dfs.master.placement import Placement
from dfs.master.recovery import LeaseRecovery
from dfs.master.repair import Repair
from dfs.master.replication import Replicator
from dfs.master.servers import Registry
from dfs.master.xattrs import XATTR_SIZE_MAX, Xattrs
from dfs.metrics import metrics_middleware
from dfs.names import CLUSTER_PATH_MAX, PATH_MAX
from dfs.protocol import MAX_FILE_SIZE, MAX_GOAL, MAX_RESIDENT, SESSION_HEADER
from dfs.tokens import AUTH_HEADER, AUTH_SCHEME, RequestVerifier
from dfs.web import (
    MAX_JSON_BODY,
    Params,
    add_health,
    background,
    error_middleware,
    json_error,
    parse_json,
    read_body,
    read_json,
)

log = logging.getLogger("master.app")

#: A chunk report lists every chunk of a server: allow far more than an ordinary JSON body.
MAX_REGISTER_BODY = 256 * 1024 * 1024
#: Chunkserver calls made by the master (truncates) give up after this long.
CHUNKSERVER_TIMEOUT = 5.0
HOUSEKEEPING_INTERVAL = 1.0


@dataclass(slots=True)
class Master:
    config: MasterConfig
    db: Database
    registry: Registry
    leases: LeaseTable
    namespace: Namespace
    placement: Placement
    xattrs: Xattrs
    replicator: Replicator  # copy_replica (master/replication.py)
    repair: Repair  # re-replication job (master/repair.py)
    recovery: LeaseRecovery  # lease recovery job (master/recovery.py)
    delegations: Delegations  # folders clients change on their own for a while
    reservations: Reservations  # inode numbers handed to clients ahead of time
    batch: DirBatch  # what they send of those changes


CONFIG_KEY = web.AppKey("config", MasterConfig)
MASTER_KEY = web.AppKey("master", Master)
VERIFIER = web.AppKey("verifier", RequestVerifier)

Op = Callable[[Master, Params, Caller], Awaitable[dict[str, Any]]]
SessionOp = Callable[[Master, Params, Caller, str], Awaitable[dict[str, Any]]]


# -- field readers --------------------------------------------------------------------------------

def _inode(p: Params, key: str = "inode") -> int:
    return int(p.int(key, minimum=1, maximum=INT64_MAX))


def _name(p: Params, key: str = "name") -> str:
    return str(p.str(key, max_length=1024))


def _id(p: Params, key: str) -> int:
    return int(p.int(key, 0, minimum=0, maximum=UID_MAX))


def _time(p: Params, key: str) -> int | None:
    return p.int(key, None, minimum=-INT64_MAX - 1, maximum=INT64_MAX)


def _client(p: Params) -> str:
    client = str(p.str("client", max_length=256))
    if not client:
        raise DfsError(errno.EINVAL, "'client' cannot be empty")
    return client


def _b64(p: Params, key: str, max_bytes: int = XATTR_SIZE_MAX) -> bytes:
    text = p.str(key, max_length=(max_bytes + 3) * 4 // 3 + 8)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DfsError(errno.EINVAL, f"'{key}' is not valid base64") from None


def _items(p: Params, key: str, max_items: int, default: Any = None) -> list[Params]:
    items = p.list(key, [] if default is None else default, max_items=max_items)
    if any(not isinstance(item, dict) for item in items):
        raise DfsError(errno.EINVAL, f"'{key}' must be a list of objects")
    return [Params(item, typed=True) for item in items]


# -- namespace ------------------------------------------------------------------------------------

async def op_resolve(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    attr = await m.namespace.resolve(p.str("path", max_length=CLUSTER_PATH_MAX), bool(p.bool("follow", False)),
                                     caller=c)
    return {"attr": attr_json(attr)}


async def op_lookup(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    return {"attr": attr_json(await m.namespace.lookup(_inode(p, "parent"), _name(p), caller=c))}


async def op_getattr(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    access = int(p.int("access", 0, minimum=0, maximum=7))  # R_OK|W_OK|X_OK the caller needs (open)
    slots = int(p.int("chunks", 0, minimum=0, maximum=256))  # an open for reading: its first read's locations
    if not slots:
        return {"attr": attr_json(await m.namespace.getattr(_inode(p), caller=c, access=access))}
    attr, where = await m.placement.open_attr(_inode(p), slots, access, caller=c)
    reply: dict[str, Any] = {"attr": attr_json(attr)}
    if where is not None:
        reply["chunks"] = where["chunks"]
        if "resident_b64" in where:
            reply["resident_b64"] = where["resident_b64"]
    return reply


async def op_setattr(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    attr = await m.namespace.setattr(
        _inode(p), mode=p.int("mode", None, minimum=0, maximum=0o7777),
        uid=p.int("uid", None, minimum=0, maximum=UID_MAX), gid=p.int("gid", None, minimum=0, maximum=UID_MAX),
        size=p.int("size", None, minimum=0), atime_ns=_time(p, "atime_ns"), mtime_ns=_time(p, "mtime_ns"),
        atime_now=bool(p.bool("atime_now", False)), mtime_now=bool(p.bool("mtime_now", False)), caller=c,
    )
    return {"attr": attr_json(attr)}


async def op_mkdir(m: Master, p: Params, c: Caller, session: str) -> dict[str, Any]:
    attr = await m.namespace.mkdir(_inode(p, "parent"), _name(p), p.int("mode", 0o755, minimum=0, maximum=0o177777),
                                   _id(p, "uid"), _id(p, "gid"), caller=c)
    reply: dict[str, Any] = {"attr": attr_json(attr)}
    if p.bool("delegate", False):
        reply["delegated"] = m.delegations.grant(session, attr.inode)
    return reply


# -- folder delegations (master/delegations.py) ---------------------------------------------------

async def op_reserve(m: Master, p: Params, c: Caller, session: str) -> dict[str, Any]:
    count = int(p.int("count", minimum=1, maximum=inode_ids.RESERVE_MAX))
    if not session or not inode_ids.supported(m.db.dialect):
        return {"inodes": []}
    numbers = await m.db.run_write(lambda conn: inode_ids.reserve(conn, count))
    m.reservations.add(session, numbers)
    return {"inodes": numbers}


def _change(item: Params, c: Caller) -> Change:
    """One change of a batch (its fields passed the request table), made by `c` or by the user it names in
    `as` (a proxy key's batch carries the changes of every user of a mount, each checked as that user)."""
    who = c
    if item.data.get("as") is not None:
        if not c.proxy:
            raise DfsError(errno.EACCES, "only a proxy or admin key may send changes made by other users ('as')")
        made_by = Params(item.data["as"], typed=True)
        who = Caller(_id(made_by, "uid"), _id(made_by, "gid"), frozenset(made_by.int_list("groups", [])))
    if item.str("op") == "commit":
        return Change(op="commit", inode=_inode(item), time_ns=int(item.int("time_ns", 0)),
                      mode=item.int("mode", None), size=int(item.int("size", 0)), mtime_ns=_time(item, "mtime_ns"),
                      atime_ns=_time(item, "atime_ns"), resident=_resident(item) or [], who=who)
    return Change(op=str(item.str("op")), parent=_inode(item, "parent"), name=_name(item),
                  inode=int(item.int("inode", 0)), time_ns=int(item.int("time_ns", 0)), mode=int(item.int("mode", 0)),
                  uid=_id(item, "uid"), gid=_id(item, "gid"), target=str(item.str("target", "")),
                  held=frozenset(item.int_list("held", [])), who=who)


async def op_batch(m: Master, p: Params, c: Caller, session: str) -> dict[str, Any]:
    changes = [_change(item, c) for item in _items(p, "changes", MAX_CHANGES)]
    answers = await m.batch.apply(session, changes)
    m.delegations.release(session, p.int_list("release", []))
    return {"answers": answers}


async def op_recalls(m: Master, p: Params, c: Caller, session: str) -> dict[str, Any]:
    if not session:
        raise DfsError(errno.EINVAL, f"recalls needs the {SESSION_HEADER} header")
    wait = float(p.int("wait", minimum=0, maximum=int(MAX_WAIT)))
    return {"folders": await m.delegations.recalls(session, wait, connection_alive.get())}


async def op_create(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    attr, created = await m.namespace.create(
        _inode(p, "parent"), _name(p), p.int("mode", 0o644, minimum=0, maximum=0o177777), _id(p, "uid"),
        _id(p, "gid"), bool(p.bool("exclusive", False)), p.int("goal", None, minimum=1, maximum=MAX_GOAL),
        p.int("rdev", 0, minimum=0, maximum=INT64_MAX), caller=c,
    )
    return {"attr": attr_json(attr), "created": created}


async def op_readdir(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    entries, after, data = await m.namespace.readdir(
        _inode(p), p.str("after", None, max_length=1024), p.int("limit", LIST_DEFAULT, minimum=1, maximum=LIST_MAX),
        caller=c, data=bool(p.bool("data", False)))
    listed = [{"name": name, "attr": attr_json(attr)} for name, attr in entries]
    if data:
        for entry, (_, attr) in zip(listed, entries, strict=True):
            if attr.inode in data:
                entry["resident_b64"] = base64.b64encode(data[attr.inode]).decode("ascii")
    return {"entries": listed, "next": after}


def _held(p: Params) -> frozenset[int]:
    """Inodes the caller has open: removing their last name keeps them until `forget`."""
    return frozenset(p.int_list("held", [], max_items=100_000))


async def op_unlink(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    return {"mtime_ns": await m.namespace.unlink(_inode(p, "parent"), _name(p), _held(p), caller=c)}


async def op_forget(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    await m.namespace.forget(_inode(p), caller=c)
    return {}


async def op_rmdir(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    await m.namespace.rmdir(_inode(p, "parent"), _name(p), caller=c)
    return {}


async def op_rename(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    renamed = await m.namespace.rename(_inode(p, "parent"), _name(p), _inode(p, "new_parent"), _name(p, "new_name"),
                                       noreplace=bool(p.bool("noreplace", False)),
                                       exchange=bool(p.bool("exchange", False)), held=_held(p), caller=c)
    return {"renamed": renamed}


async def op_link(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    attr = await m.namespace.link(_inode(p), _inode(p, "new_parent"), _name(p, "new_name"), caller=c)
    return {"attr": attr_json(attr)}


async def op_symlink(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    attr = await m.namespace.symlink(_inode(p, "parent"), _name(p), p.str("target", max_length=PATH_MAX * 4),
                                     _id(p, "uid"), _id(p, "gid"), caller=c)
    return {"attr": attr_json(attr)}


async def op_readlink(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    return {"target": await m.namespace.readlink(_inode(p))}


async def op_statfs(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    return await m.registry.statfs()


async def op_getxattr(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    value = await m.xattrs.getxattr(_inode(p), _name(p), caller=c)
    return {"value_b64": base64.b64encode(value).decode("ascii")}


async def op_setxattr(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    await m.xattrs.setxattr(_inode(p), _name(p), _b64(p, "value_b64"), p.int("flags", 0, minimum=0, maximum=3),
                            caller=c)
    return {}


async def op_listxattr(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    return {"names": await m.xattrs.listxattr(_inode(p), caller=c)}


async def op_removexattr(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    await m.xattrs.removexattr(_inode(p), _name(p), caller=c)
    return {}


# -- placement ------------------------------------------------------------------------------------

async def op_chunks(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    return await m.placement.chunks(_inode(p), p.int("first", 0, minimum=0, maximum=MAX_FILE_SIZE),
                                    p.int("count", 1000, minimum=1, maximum=100_000), caller=c)


async def op_lease(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    return await m.placement.lease(_inode(p), p.int("index", minimum=0, maximum=MAX_FILE_SIZE), _client(p),
                                   p.int_list("exclude", [], max_items=1000), caller=c)


async def op_commit(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    attr = await m.placement.commit(_inode(p), _client(p), p.int("size", None, minimum=0, maximum=INT64_MAX),
                                    _time(p, "mtime_ns"), bool(p.bool("release", True)), atime_ns=_time(p, "atime_ns"),
                                    mode=p.int("mode", None, minimum=0, maximum=0o777),
                                    resident_data=_resident(p), caller=c)
    return {"attr": attr_json(attr)}


def _resident(p: Params) -> list[tuple[int, bytes]] | None:
    """A commit's resident bytes: (offset, bytes) pieces (None: its data went to chunkservers)."""
    if p.data.get("resident") is None:
        return None
    return [(int(item.int("offset", minimum=0, maximum=MAX_RESIDENT)), _b64(item, "data_b64", MAX_RESIDENT))
            for item in _items(p, "resident", MAX_RESIDENT_EXTENTS)]


async def op_report(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    await m.placement.report(_inode(p, "chunk_id"), _inode(p, "server_id"),
                             p.int("version", minimum=0, maximum=INT64_MAX), p.str("problem", max_length=32))
    return {}


# -- chunkservers ---------------------------------------------------------------------------------

def _url(p: Params) -> str:
    url = str(p.str("url", max_length=2048)).rstrip("/")
    if "\0" in url:  # PostgreSQL text cannot hold NUL
        raise DfsError(errno.EINVAL, "'url' may not contain NUL")
    if not url.startswith(("http://", "https://")):
        raise DfsError(errno.EINVAL, f"'url' must be an http(s) URL: {url!r}")
    return url


def _space(p: Params) -> tuple[int, int, int]:
    return tuple(p.int(k, minimum=0, maximum=INT64_MAX) for k in ("capacity", "used", "free"))  # type: ignore[return-value]


async def op_register(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    uuid = str(p.str("uuid", max_length=128))
    if not uuid or "\0" in uuid:
        raise DfsError(errno.EINVAL, "'uuid' must be a non-empty string without NUL")
    report = [(_inode(c, "chunk_id"), int(c.int("version", minimum=0, maximum=INT64_MAX)),
               bool(c.bool("pending", False))) for c in _items(p, "chunks", MAX_REPORTED_CHUNKS)]
    return await m.registry.register(uuid, _url(p), *_space(p), report)


async def op_heartbeat(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    bad = [(_inode(b, "chunk_id"), int(b.int("version", minimum=0, maximum=INT64_MAX)),
            str(b.str("problem", "corrupt", max_length=32))) for b in _items(p, "bad", 100_000)]
    return await m.registry.heartbeat(_inode(p, "server_id"), *_space(p), bad,
                                      load=p.int("load", 0, minimum=0, maximum=INT64_MAX))


async def op_goodbye(m: Master, p: Params, c: Caller) -> dict[str, Any]:
    await m.registry.goodbye(_inode(p, "server_id"))
    return {}


OPS: dict[str, Op] = {
    "resolve": op_resolve, "lookup": op_lookup, "getattr": op_getattr, "setattr": op_setattr,
    "create": op_create, "readdir": op_readdir, "unlink": op_unlink, "forget": op_forget,
    "rmdir": op_rmdir,
    "rename": op_rename, "link": op_link, "symlink": op_symlink, "readlink": op_readlink, "statfs": op_statfs,
    "getxattr": op_getxattr, "setxattr": op_setxattr, "listxattr": op_listxattr, "removexattr": op_removexattr,
    "chunks": op_chunks, "lease": op_lease, "commit": op_commit, "report": op_report,
    "cs/register": op_register, "cs/heartbeat": op_heartbeat, "cs/goodbye": op_goodbye,
}
#: Calls that need the caller's session (SESSION_HEADER).
SESSION_OPS: dict[str, SessionOp] = {"mkdir": op_mkdir, "reserve": op_reserve, "batch": op_batch,
                                     "recalls": op_recalls}
#: Calls that may reach any folder (a path walk, or an entry that may be a folder of its own): every
#: folder delegated to another session is recalled first.
ANY_FOLDER = {"resolve", "rename", "rmdir"}
#: Calls that touch no folder's entries or attributes.
NO_FOLDER = {"statfs", "report", "reserve", "recalls", "chunks", "lease", "commit", "readlink",
             "cs/register", "cs/heartbeat", "cs/goodbye"}
#: Calls that only read, whose answer may show a folder delegated to another session: asked again after a recall.
READS = {"lookup", "getattr", "readdir"}


def _touched(name: str, p: Params) -> list[int] | None:
    """The folders (and other inodes) a call names, None for any folder."""
    if name in ANY_FOLDER:
        return None
    data = p.data
    if name == "batch":
        return [item["parent"] for item in data.get("changes", ()) if isinstance(item, dict) and "parent" in item]
    return [value for key in ("parent", "new_parent", "inode") if isinstance(value := data.get(key), int)]


def _shown(reply: dict[str, Any]) -> list[int]:
    """The inodes whose attributes a read's answer shows."""
    if "entries" in reply:
        return [entry["attr"]["inode"] for entry in reply["entries"]]
    return [reply["attr"]["inode"]] if "attr" in reply else []


async def run_op(m: Master, name: str, params: Params, caller: Caller, session: str) -> dict[str, Any]:
    """One call, once no other session holds a folder it touches (master/delegations.py)."""
    delegations = m.delegations
    if len(delegations) and name not in NO_FOLDER:
        await delegations.settle(session, _touched(name, params))
    if name in SESSION_OPS:
        return await SESSION_OPS[name](m, params, caller, session)
    reply = await OPS[name](m, params, caller)
    if len(delegations) and name in READS:
        shown = delegations.others(session, _shown(reply))
        if shown:  # it answered with a folder someone else is changing: once that is settled, again
            await delegations.settle(session, shown)
            reply = await OPS[name](m, params, caller)
    return reply


def _handler(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    fields = api_schema.OPS[name].fields  # the request table: checked here, published in /openapi.json

    async def handle(request: web.Request) -> web.Response:
        params = checked(await read_json(request, MAX_JSON_BODY), fields)
        transport = request.transport
        connection_alive.set(lambda: transport is not None and not transport.is_closing())
        return web.json_response(await run_op(request.app[MASTER_KEY], name, params, caller_of(request),
                                              request.headers.get(SESSION_HEADER, "")))

    return handle


def _chunkserver_handler(op: Op, name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """cs/*: only for chunkservers that sign the request with the cluster's join token (401 otherwise)."""
    fields = api_schema.OPS[name].fields
    limit = MAX_REGISTER_BODY if name == "cs/register" else MAX_JSON_BODY

    async def handle(request: web.Request) -> web.Response:
        raw = await read_body(request, limit)
        try:
            request.app[VERIFIER].verify(request.headers.get(AUTH_HEADER), request.method, request.path, raw)
        except DfsError as err:
            log.warning("%s from %s refused: %s", request.path, request.remote, err.message)
            response = json_error(err)
            response.headers["WWW-Authenticate"] = AUTH_SCHEME
            return response
        return web.json_response(await op(request.app[MASTER_KEY], checked(parse_json(raw), fields), ROOT))

    return handle


async def status(request: web.Request) -> web.Response:
    m = request.app[MASTER_KEY]
    servers = m.registry.summary()
    return web.json_response({
        "servers": servers, "servers_live": sum(1 for s in servers if s["state"] == "live"),
        **await m.namespace.counts(), "leases": len(m.leases), "delegated_folders": len(m.delegations),
        "chunk_size": m.config.chunk_size, "goal": m.config.goal, "resident_max": m.config.resident_max,
        "repair": m.repair.status(), "recovery": m.recovery.status(),
        **({"insecure": True, "warning": INSECURE_WARNING} if m.config.insecure else {}),
    })


# -- lifecycle ------------------------------------------------------------------------------------

async def _housekeeping(m: Master) -> None:
    while True:
        await asyncio.sleep(HOUSEKEEPING_INTERVAL)
        try:
            await m.registry.check_dead()
            m.leases.expire()
        except Exception:  # one failed round must not end the loop
            log.exception("housekeeping failed")


async def _resources(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    db = Database(config.database_url)
    await db.start(config.goal)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CHUNKSERVER_TIMEOUT),
                                    connector=aiohttp.TCPConnector(ssl=tls.client_context()))
    try:
        keys = KeyStore(db)
        await keys.load()
        await keys.ensure_admin_file(config.data_dir)
        app[KEYS] = keys
        registry = Registry(db, config)
        await registry.load()
        leases = LeaseTable()
        namespace = Namespace(db, config, registry, leases, lambda: session)
        replicator = Replicator(db, config, registry, leases, session)
        repair = Repair(db, config, registry, leases, replicator)
        recovery = LeaseRecovery(db, config, registry, leases, session)
        placement = Placement(db, config, registry, leases, session)
        delegations, reservations = Delegations(config.recall_timeout), Reservations()
        if inode_ids.supported(db.dialect):
            reservations.boot = await db.run_read(inode_ids.high_water)
        master = Master(config, db, registry, leases, namespace, placement, Xattrs(db), replicator, repair, recovery,
                        delegations, reservations, DirBatch(db, namespace, placement, delegations, reservations))
        app[MASTER_KEY] = master
        async with (background(_housekeeping(master), "housekeeping"),
                    background(repair.run_forever(), "re-replication"),
                    background(recovery.run_forever(), "lease recovery")):
            try:
                yield
            finally:
                await repair.close()
    finally:
        await session.close()
        await db.close()


def create_app(config: MasterConfig) -> web.Application:
    app = web.Application(middlewares=[metrics_middleware, error_middleware, auth_middleware])
    app[CONFIG_KEY] = config
    add_auth(app, config.insecure)  # access keys: master/auth.py
    if config.insecure:
        log.warning(INSECURE_WARNING)
    app.cleanup_ctx.append(_resources)
    app[VERIFIER] = RequestVerifier(config.load_keys())
    handled = OPS.keys() | SESSION_OPS.keys()
    if handled != api_schema.OPS.keys():
        raise RuntimeError(f"master/api_schema.py OPS differ from the handlers: {handled ^ api_schema.OPS.keys()}")
    for name in handled:
        if name.startswith("cs/"):
            app.router.add_post(f"/api/{name}", _chunkserver_handler(OPS[name], name))
        else:
            app.router.add_post(f"/api/{name}", _handler(name))
    app.router.add_get("/api/status", status)
    add_admin_routes(app)  # /api/admin/...: status, balance, decommission, fsck, setrep (master/admin_api.py)
    # chunk_size: clients learn it before they are authenticated (the gateway has no key of its own)
    add_health(app, "master", lambda: {"chunk_size": config.chunk_size, "resident_max": config.resident_max,
                                       **({"insecure": True} if config.insecure else {})})
    add_openapi(app)  # GET /openapi.json, from master/api_schema.py

    async def dispatch(name: str, params: Params, caller: Caller, session: str) -> dict[str, Any]:
        return await run_op(app[MASTER_KEY], name, params, caller, session)

    add_channel(app, dispatch)  # GET /api/channel: the same calls over a WebSocket (master/channel.py)
    add_dashboard_routes(app, config.gateway_url)  # / and /dashboard/: the web page (master/dashboard)
    add_master_metrics(app)  # /metrics (master/metrics.py); after the admin jobs, whose figures it reads
    return app
