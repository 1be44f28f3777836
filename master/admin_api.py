"""`/api/admin/...`: the master's administrative routes (docs/PROTOCOL.md "Master: administration").

`add_admin_routes(app)` is called by master/app.py: it adds the routes and a cleanup context that
starts the admin jobs (drain, goal keeper) once the master's own resources are open. Every route takes
POST with a JSON body; the read-only ones answer GET as well, for curl.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from dfs import tls
from dfs.apispec import checked
from dfs.errors import DfsError
from dfs.master import admin, api_schema
from dfs.master.api_schema import MAX_MOVES
from dfs.master.auth import keys_create, keys_list, keys_revoke
from dfs.master.balance import Balancer
from dfs.master.decommission import Decommissioner
from dfs.master.fsck import Fsck
from dfs.master.goals import GoalKeeper
from dfs.master.moves import Mover
from dfs.names import PATH_MAX
from dfs.protocol import MAX_GOAL
from dfs.web import Params, background, read_json

#: Chunkserver calls of the admin jobs (copies wait for the target's whole pull).
SESSION_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=120.0)


@dataclass(slots=True)
class Admin:
    session: aiohttp.ClientSession
    mover: Mover
    balancer: Balancer
    drainer: Decommissioner
    keeper: GoalKeeper
    fsck: Fsck


ADMIN_KEY = web.AppKey("admin", Admin)
Route = Callable[[web.Application, Admin, Params], Awaitable[dict[str, Any]]]


def _path(p: Params) -> str:
    path = str(p.str("path", "/", max_length=PATH_MAX * 4)) or "/"
    return path if path.startswith("/") else "/" + path


def _master(app: web.Application) -> Any:
    from dfs.master.app import MASTER_KEY  # master/app.py imports this module

    return app[MASTER_KEY]


async def _settled(app: web.Application) -> None:
    """Before a walk of the tree: every folder a client changes on its own is given back first
    (master/delegations.py), so the walk sees those changes."""
    await _master(app).delegations.settle("", None)


def _threshold(p: Params) -> float:
    value = p.data.get("threshold")
    value = 10 if value is None else value
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 100:
        raise DfsError(errno.EINVAL, "'threshold' must be a number of percentage points in (0, 100]")
    return float(value)


# -- routes ---------------------------------------------------------------------------------------------

async def r_status(app: web.Application, a: Admin, p: Params) -> dict[str, Any]:
    return await admin.status(_master(app), a.balancer.status(), (await a.drainer.status())["nodes"])


async def r_nodes(app: web.Application, a: Admin, p: Params) -> dict[str, Any]:
    return await admin.nodes(_master(app))


async def r_df(app: web.Application, a: Admin, p: Params) -> dict[str, Any]:
    return await admin.df(_master(app))


async def r_info(app: web.Application, a: Admin, p: Params) -> dict[str, Any]:
    await _settled(app)
    return await admin.info(_master(app), a.session, _path(p))


async def r_fsck(app: web.Application, a: Admin, p: Params) -> dict[str, Any]:
    await _settled(app)
    return await a.fsck.run(_path(p), bool(p.bool("repair", False)), bool(p.bool("verify", True)))


async def r_setrep(app: web.Application, a: Admin, p: Params) -> dict[str, Any]:
    goal = int(p.int("goal", minimum=1, maximum=MAX_GOAL))
    await _settled(app)
    return await admin.setrep(_master(app), a.keeper, _path(p), goal, bool(p.bool("recursive", False)))


async def r_setrep_progress(app: web.Application, a: Admin, p: Params) -> dict[str, Any]:
    await _settled(app)
    return await admin.setrep_progress(_master(app), a.keeper, _path(p), bool(p.bool("recursive", False)))


async def r_balance(app: web.Application, a: Admin, p: Params) -> dict[str, Any]:
    return a.balancer.status()


async def r_balance_plan(app: web.Application, a: Admin, p: Params) -> dict[str, Any]:
    return await a.balancer.plan(_threshold(p), int(p.int("max_moves", MAX_MOVES, minimum=1, maximum=MAX_MOVES)))


async def r_balance_start(app: web.Application, a: Admin, p: Params) -> dict[str, Any]:
    rate = p.int("max_bandwidth", None, minimum=1, maximum=2**62)
    return a.balancer.start(_threshold(p), rate, int(p.int("max_moves", MAX_MOVES, minimum=1, maximum=MAX_MOVES)))


async def r_balance_stop(app: web.Application, a: Admin, p: Params) -> dict[str, Any]:
    return a.balancer.stop()


async def r_decommission(app: web.Application, a: Admin, p: Params) -> dict[str, Any]:
    return await a.drainer.start(str(p.str("node", max_length=2048)), bool(p.bool("force", False)))


async def r_decommission_status(app: web.Application, a: Admin, p: Params) -> dict[str, Any]:
    return await a.drainer.status()


async def r_decommission_cancel(app: web.Application, a: Admin, p: Params) -> dict[str, Any]:
    return await a.drainer.cancel(str(p.str("node", max_length=2048)))


async def r_recommission(app: web.Application, a: Admin, p: Params) -> dict[str, Any]:
    return await a.drainer.recommission(str(p.str("node", max_length=2048)))


#: name -> (handler, answers GET too)
ROUTES: dict[str, tuple[Route, bool]] = {
    "status": (r_status, True), "nodes": (r_nodes, True), "df": (r_df, True),
    "info": (r_info, False), "fsck": (r_fsck, False),
    "setrep": (r_setrep, False), "setrep/progress": (r_setrep_progress, False),
    "balance": (r_balance, True), "balance/plan": (r_balance_plan, False),
    "balance/start": (r_balance_start, False), "balance/stop": (r_balance_stop, False),
    "decommission": (r_decommission, False), "decommission/status": (r_decommission_status, True),
    "decommission/cancel": (r_decommission_cancel, False), "recommission": (r_recommission, False),
    "keys": (keys_list, True), "keys/create": (keys_create, False), "keys/revoke": (keys_revoke, False),
}


def _handler(route: Route, fields: api_schema.Fields) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        # GET serves only routes without fields (asserted in add_admin_routes): the query is ignored.
        params = checked(Params({}) if request.method == "GET" else await read_json(request), fields)
        if ADMIN_KEY not in request.app:
            raise DfsError(errno.EAGAIN, "the master is starting")
        return web.json_response(await route(request.app, request.app[ADMIN_KEY], params))

    return handle


async def _jobs(app: web.Application) -> AsyncIterator[None]:
    master = _master(app)
    async with aiohttp.ClientSession(timeout=SESSION_TIMEOUT,
                                     connector=aiohttp.TCPConnector(ssl=tls.client_context())) as session:
        mover = Mover(master, session)
        drainer = Decommissioner(master, mover)
        await drainer.load()
        keeper = GoalKeeper(master, mover)
        state = Admin(session, mover, Balancer(master, mover), drainer, keeper, Fsck(master, mover, session))
        app[ADMIN_KEY] = state
        try:
            async with background(drainer.run(), "decommission"), background(keeper.run(), "goals"):
                yield
        finally:
            await state.balancer.close()


def add_admin_routes(app: web.Application) -> None:
    """Routes under /api/admin/ and the admin jobs; call after the master's own cleanup context."""
    app.cleanup_ctx.append(_jobs)
    if ROUTES.keys() != api_schema.ADMIN.keys():
        raise RuntimeError(f"master/api_schema.py ADMIN differs from ROUTES: {ROUTES.keys() ^ api_schema.ADMIN.keys()}")
    for name, (route, readable) in ROUTES.items():
        fields = api_schema.ADMIN[name].fields
        if readable and fields:
            raise RuntimeError(f"admin route {name} answers GET but takes fields")
        handle = _handler(route, fields)
        app.router.add_post(f"/api/admin/{name}", handle)
        if readable:
            app.router.add_get(f"/api/admin/{name}", handle)


def add_openapi(app: web.Application) -> None:
    """`GET /openapi.json`: the master's API, generated from master/api_schema.py."""
    document = api_schema.openapi_document(frozenset(name for name, (_, readable) in ROUTES.items() if readable))

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(document)

    app.router.add_get("/openapi.json", openapi)
