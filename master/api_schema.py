"""The master's request table: the fields of every `/api/<op>` and `/api/admin/<op>` body, declared once.

master/app.py and master/admin_api.py check each body against its entry before the handler runs
(dfs/apispec.py), and `GET /openapi.json` is generated from the same entries, so the document says
exactly what the handlers accept. Handlers may read only the fields declared here.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

from dfs.apispec import Field, Fields, array, boolean, integer, number, obj, request_body, string
from dfs.limits import INT64_MAX, LIST_DEFAULT, LIST_MAX, MAX_LIST_ITEMS, UID_MAX
from dfs.master.batch import KINDS, MAX_CHANGES
from dfs.master.delegations import MAX_WAIT
from dfs.master.inode_ids import RESERVE_MAX
from dfs.master.keys import SCOPES
from dfs.master.servers import BAD_PROBLEMS
from dfs.master.xattrs import XATTR_SIZE_MAX
from dfs.names import CLUSTER_PATH_MAX, NAME_MAX, PATH_MAX
from dfs.protocol import MAX_FILE_SIZE, MAX_GOAL, MAX_RESIDENT, Attr

#: Chunks in one registration report (its body may be up to master/app.py MAX_REGISTER_BODY).
MAX_REPORTED_CHUNKS = 10_000_000
#: Moves in one balancing plan.
MAX_MOVES = 10_000_000


@dataclass(frozen=True)
class Op:
    """One operation: its summary, its request fields and, where it is exact, its reply's schema."""

    summary: str
    fields: Fields
    reply: dict[str, Any] | None = None


# -- replies ------------------------------------------------------------------------------------------------------

ATTR: dict[str, Any] = {"$ref": "#/components/schemas/Attr"}


def reply(**properties: Any) -> dict[str, Any]:
    """An object with exactly these members, all present."""
    return {"type": "object", "properties": properties, "required": list(properties)}


WITH_ATTR = reply(attr=ATTR)
EMPTY = reply()

# -- field kinds ---------------------------------------------------------------------------------------------------


def inode(description: str = "Inode number (1 is the root folder).") -> Field:
    return integer(1, INT64_MAX, required=True, description=description, example=1)


def name(description: str = "", too_long: int = errno.ENAMETOOLONG) -> Field:
    """A name of at most NAME_MAX bytes, so of at most NAME_MAX characters (dfs/names.py counts the bytes)."""
    return string(NAME_MAX, required=True, min_length=1, plain=False, example="example", too_large=too_long,
                  description=description or
                  f"A directory entry name: 1..{NAME_MAX} bytes of UTF-8, no '/' or NUL, not '.' or '..'.")


XATTR_NAME = name("Attribute name: 1..255 bytes, no NUL.", too_long=errno.ERANGE)


ID = integer(0, UID_MAX, default=0, description="User or group id.")
TIME = integer(description="Nanoseconds since the epoch (int64).")
HELD = array(integer(1, INT64_MAX), MAX_LIST_ITEMS, "Inodes the caller has open (kept alive at nlink 0).")
CLIENT = string(256, required=True, min_length=1, description="The writing client's id.")
SPACE: Fields = {key: integer(0, INT64_MAX, required=True, description=f"Bytes ({key}).")
                 for key in ("capacity", "used", "free")}
ADMIN_PATH = string(PATH_MAX * 4, default="/", plain=False, too_large=errno.ENAMETOOLONG,
                    description="Path in the cluster (a missing leading '/' is added).")
SIZE = integer(0, MAX_FILE_SIZE, too_large=errno.EFBIG, description="File size in bytes.")
NODE = string(2048, required=True, description="A chunkserver: its id, URL or host:port.")
THRESHOLD = number(0, 100, exclusive_minimum=True, default=10,
                   description="Percentage points of utilisation a server may differ from the mean.")
MAX_MOVES_FIELD = integer(1, MAX_MOVES, default=MAX_MOVES, description="Moves at most.")
B64_MAX = (XATTR_SIZE_MAX + 3) * 4 // 3 + 8
RESIDENT_B64_MAX = (MAX_RESIDENT + 3) * 4 // 3 + 8
MAX_RESIDENT_EXTENTS = 1024  # pieces of resident bytes in one commit
RESIDENT_PIECES = array(obj({"offset": integer(0, MAX_RESIDENT, required=True),
                             "data_b64": string(RESIDENT_B64_MAX, required=True, description="Base64.")}),
                        MAX_RESIDENT_EXTENTS, "The written bytes themselves, for the master to keep (a small file "
                        "with no chunk: docs/PROTOCOL.md \"Resident data\"); EXDEV when it will not.")

# -- /api/<op> ---------------------------------------------------------------------------------------------------

OPS: dict[str, Op] = {
    "resolve": Op("Walk a path to its attributes", {
        "path": string(CLUSTER_PATH_MAX, required=True, plain=False, description="Absolute path.", example="/",
                       pattern="^/", too_large=errno.ENAMETOOLONG),
        "follow": boolean(False, "Follow a symlink in the last component.")}, WITH_ATTR),
    "lookup": Op("An entry of a folder", {"parent": inode(), "name": name()}, WITH_ATTR),
    "getattr": Op("Attributes of an inode", {
        "inode": inode(), "access": integer(0, 7, default=0, description="R_OK|W_OK|X_OK to check, as access(2)."),
        "chunks": integer(0, 256, default=0, description="Also where the first this many chunk slots of a "
                          "regular file are, as `chunks` answers, when the caller may read it.")},
        {"type": "object", "properties": {"attr": ATTR, "chunks": {"type": "array", "items": {"type": "object"}},
                                          "resident_b64": {"type": "string", "format": "byte", "description":
                                                           "A resident file's bytes (docs/PROTOCOL.md)."}},
         "required": ["attr"]}),
    "setattr": Op("Change mode, owner, size or times", {
        "inode": inode(), "mode": integer(0, 0o7777, description="Permission bits."),
        "uid": integer(0, UID_MAX), "gid": integer(0, UID_MAX),
        "size": SIZE,
        "atime_ns": TIME, "mtime_ns": TIME,
        "atime_now": boolean(False, "Set atime to now (UTIME_NOW: write permission is enough)."),
        "mtime_now": boolean(False, "Set mtime to now (UTIME_NOW).")}, WITH_ATTR),
    "mkdir": Op("Make a folder", {"parent": inode(), "name": name(), "mode": integer(0, 0o177777, default=0o755),
                                "uid": ID, "gid": ID,
                                "delegate": boolean(False, "Delegate the new folder to the caller's session "
                                                    "(docs/PROTOCOL.md \"Folder delegations\").")},
                {"type": "object", "properties": {"attr": ATTR, "delegated": {"type": "boolean"}},
                 "required": ["attr"]}),
    "reserve": Op("Inode numbers for the caller's session to give the files it creates in its delegated folders", {
        "count": integer(1, RESERVE_MAX, required=True)},
        reply(inodes={"type": "array", "items": {"type": "integer"}})),
    "batch": Op("Changes the caller's session made in its delegated folders, in order", {
        "changes": array(obj({
            "op": string(16, required=True, enum=KINDS),
            "parent": integer(1, INT64_MAX, description="The folder (all but commit)."),
            "name": string(NAME_MAX, min_length=1, plain=False, too_large=errno.ENAMETOOLONG,
                           description="The entry (all but commit)."),
            "inode": integer(0, INT64_MAX, default=0, description="A new inode's number (from `reserve`); the "
                             "file a commit is of."),
            "time_ns": integer(0, INT64_MAX, default=0, description="A new inode's times and the folder's new "
                               "mtime; a commit's ctime."),
            "mode": integer(0, 0o177777, description="A new inode's mode; the permission bits a commit sets."),
            "uid": ID, "gid": ID,
            "target": string(PATH_MAX, default="", plain=False, too_large=errno.ENAMETOOLONG,
                             description="A symlink's target."),
            "held": HELD, "size": SIZE, "mtime_ns": TIME, "atime_ns": TIME,
            "resident": RESIDENT_PIECES,
            "as": obj({"uid": integer(0, UID_MAX, required=True), "gid": integer(0, UID_MAX, required=True),
                       "groups": array(integer(0, UID_MAX), 1000)},
                      "The user who made the change (a proxy or admin key's batch only); default: the caller.")}),
            MAX_CHANGES),
        "release": array(integer(1, INT64_MAX), MAX_LIST_ITEMS, "Delegated folders given back after these changes.")},
        reply(answers={"type": "array", "items": {"type": "object"}})),
    "recalls": Op("Wait for the delegated folders the caller's session must give back", {
        "wait": integer(0, int(MAX_WAIT), required=True, description="Seconds to wait for one.")},
        reply(folders={"type": "array", "items": {"type": "integer"}})),
    "create": Op("Create a file (or a special file with S_IF* bits in mode)", {
        "parent": inode(), "name": name(), "mode": integer(0, 0o177777, default=0o644), "uid": ID, "gid": ID,
        "exclusive": boolean(False), "goal": integer(1, MAX_GOAL, description="Replication goal."),
        "rdev": integer(0, INT64_MAX, default=0)}, reply(attr=ATTR, created={"type": "boolean"})),
    "readdir": Op("A page of a folder's entries, sorted by name", {
        "inode": inode(), "after": string(1024, plain=False, description="Start after this name."),
        "limit": integer(1, LIST_MAX, default=LIST_DEFAULT),
        "data": boolean(False, "Also the resident bytes (`resident_b64`) of small files the caller may read, "
                        "up to 2 MiB a page.")},
        reply(entries={"type": "array", "items": reply(name={"type": "string"}, attr=ATTR)},
              next={"type": "string", "nullable": True})),
    "unlink": Op("Remove a name", {"parent": inode(), "name": name(), "held": HELD},
                 reply(mtime_ns={"type": "integer", "description": "The folder's new mtime and ctime."})),
    "forget": Op("The caller closed an inode for the last time", {"inode": inode()}, EMPTY),
    "rmdir": Op("Remove an empty folder", {"parent": inode(), "name": name()}, EMPTY),
    "rename": Op("Rename or exchange entries", {
        "parent": inode(), "name": name(), "new_parent": inode(), "new_name": name(),
        "noreplace": boolean(False), "exchange": boolean(False), "held": HELD},
        reply(renamed={"type": "boolean", "description": "False when both names were already one file's "
                       "(rename(2) then does nothing)."})),
    "link": Op("Add a hard link", {"inode": inode(), "new_parent": inode(), "new_name": name()}, WITH_ATTR),
    "symlink": Op("Make a symbolic link", {
        "parent": inode(), "name": name(),
        "target": string(PATH_MAX, required=True, plain=False, too_large=errno.ENAMETOOLONG,
                         description=f"1..{PATH_MAX} bytes, no NUL."),
        "uid": ID, "gid": ID}, WITH_ATTR),
    "readlink": Op("A symlink's target", {"inode": inode()}, reply(target={"type": "string"})),
    "statfs": Op("Space and file counts", {}),
    "getxattr": Op("Read an extended attribute", {"inode": inode(), "name": XATTR_NAME},
                   reply(value_b64={"type": "string", "format": "byte"})),
    "setxattr": Op("Write an extended attribute", {
        "inode": inode(), "name": XATTR_NAME,
        "value_b64": string(B64_MAX, required=True, description=f"Base64 of at most {XATTR_SIZE_MAX} bytes."),
        "flags": integer(0, 3, default=0, description="1 = create only, 2 = replace only.")}, EMPTY),
    "listxattr": Op("Names of an inode's extended attributes", {"inode": inode()},
                    reply(names={"type": "array", "items": {"type": "string"}})),
    "removexattr": Op("Remove an extended attribute", {"inode": inode(), "name": XATTR_NAME}, EMPTY),
    "chunks": Op("Where a file's chunks are", {
        "inode": inode(), "first": integer(0, MAX_FILE_SIZE, default=0, description="First chunk index."),
        "count": integer(1, 100_000, default=1000)}),
    "lease": Op("A write lease on one chunk slot", {
        "inode": inode(), "index": integer(0, MAX_FILE_SIZE, required=True), "client": CLIENT,
        "exclude": array(integer(1, INT64_MAX), 1000, "Server ids that failed the last write.")}),
    "commit": Op("Publish a write: size, times, mode, lease release", {
        "inode": inode(), "client": CLIENT, "size": SIZE, "mtime_ns": TIME, "atime_ns": TIME,
        "mode": integer(0, 0o777, description="New permission bits (rwx only) set since the write, with it: "
                        "the owner or root only."),
        "release": boolean(True),
        "resident": RESIDENT_PIECES}, WITH_ATTR),
    "report": Op("A client found a bad replica", {
        "chunk_id": inode("Chunk id."), "server_id": inode("Server id."),
        "version": integer(0, INT64_MAX, required=True),
        "problem": string(32, required=True, enum=BAD_PROBLEMS)}, EMPTY),
    "cs/register": Op("A chunkserver joins with its full chunk report", {
        "uuid": string(128, required=True, min_length=1), "url": string(2048, required=True, min_length=1),
        **SPACE,
        "chunks": array(obj({"chunk_id": inode("Chunk id."), "version": integer(0, INT64_MAX, required=True),
                             "pending": boolean(False)}), MAX_REPORTED_CHUNKS)}),
    "cs/heartbeat": Op("A chunkserver's periodic report", {
        "server_id": inode("Server id."), **SPACE, "load": integer(0, INT64_MAX, default=0),
        "bad": array(obj({"chunk_id": inode("Chunk id."), "version": integer(0, INT64_MAX, required=True),
                          "problem": string(32, default="corrupt")}), MAX_LIST_ITEMS)}),
    "cs/goodbye": Op("A chunkserver stops for a while", {"server_id": inode("Server id.")}, EMPTY),
}

# -- /api/admin/<op> ---------------------------------------------------------------------------------------------

ADMIN: dict[str, Op] = {
    "status": Op("Cluster overview", {}),
    "nodes": Op("Every chunkserver", {}),
    "df": Op("Space per chunkserver", {}),
    "info": Op("Where a file's chunks are, with replica health", {"path": ADMIN_PATH}),
    "fsck": Op("Check (and repair) a tree", {"path": ADMIN_PATH, "repair": boolean(False), "verify": boolean(True)}),
    "setrep": Op("Set the replication goal of a file or tree", {
        "path": ADMIN_PATH, "goal": integer(1, MAX_GOAL, required=True), "recursive": boolean(False)}),
    "setrep/progress": Op("How far a goal change got", {"path": ADMIN_PATH, "recursive": boolean(False)}),
    "balance": Op("Balancer status", {}),
    "balance/plan": Op("Moves that would balance the cluster", {"threshold": THRESHOLD, "max_moves": MAX_MOVES_FIELD}),
    "balance/start": Op("Start balancing", {
        "threshold": THRESHOLD, "max_bandwidth": integer(1, 2**62, description="Bytes per second."),
        "max_moves": MAX_MOVES_FIELD}),
    "balance/stop": Op("Stop balancing", {}),
    "decommission": Op("Drain a chunkserver", {"node": NODE, "force": boolean(False)}),
    "decommission/status": Op("Drains in progress", {}),
    "decommission/cancel": Op("Stop draining a chunkserver", {"node": NODE}),
    "recommission": Op("Put a drained chunkserver back in service", {"node": NODE}),
    "keys": Op("Access keys (never their secrets)", {}),
    "keys/create": Op("Make an access key; the reply is the only time the key is shown", {
        "name": string(64, required=True, min_length=1, description="Unique among keys in force."),
        "uid": integer(0, UID_MAX, required=True), "gid": integer(0, UID_MAX, required=True),
        "groups": array(integer(0, UID_MAX), 1000, "Supplementary groups."),
        "scope": string(16, default="rw", enum=SCOPES),
        "expires": number(0, 2.0**40, description="Seconds since the epoch; absent: never.")}),
    "keys/revoke": Op("Revoke an access key at once", {"name": string(64, required=True, min_length=1)}),
}

# -- the document -----------------------------------------------------------------------------------------------

ATTR_SCHEMA: dict[str, Any] = {
    **reply(**{f.name: {"type": "integer", "format": "int64"} for f in dataclass_fields(Attr)}),
    "description": "An inode's attributes (docs/PROTOCOL.md); `mode` carries the file type bits.",
}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error", "message"],
    "properties": {"error": {"type": "string", "description": "errno name", "example": "ENOENT"},
                   "message": {"type": "string"}},
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


ERRORS: dict[str, Any] = {
    "400": _error("Bad request: malformed JSON, a wrong type, a value out of bounds (EINVAL, ENAMETOOLONG)."),
    "401": _error("No access key, or one not in force (ENOKEY, EKEYREJECTED, EKEYEXPIRED, EKEYREVOKED)."),
    "403": _error("Not permitted (EPERM, EACCES)."),
    "404": _error("No such entry (ENOENT, ENODATA)."),
    "409": _error("Conflict (EEXIST, ENOTEMPTY, ENOTDIR, EISDIR, EBUSY, ...)."),
    "413": _error("Body too large (EFBIG) or value too large (E2BIG)."),
    "416": _error("Out of range (ERANGE)."),
    "502": _error("A chunkserver failed (EIO)."),
    "503": _error("Not ready or overloaded (EAGAIN)."),
    "507": _error("No space (ENOSPC)."),
}


def _responses(schema: dict[str, Any] | None) -> dict[str, Any]:
    return {"200": {"description": "Done.", "content": {"application/json": {"schema": schema or {"type": "object"}}}},
            **ERRORS}


def _operation(op_id: str, op: Op, body: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op_id, "summary": op.summary, "responses": _responses(op.reply)}
    if body:
        out["requestBody"] = request_body(op.fields)
    return out


def openapi_document(readable_admin: frozenset[str]) -> dict[str, Any]:
    """The master's API as an OpenAPI 3.0 document; `readable_admin` admin routes also answer GET."""
    paths: dict[str, Any] = {}
    for name, op in OPS.items():
        paths[f"/api/{name}"] = {"post": _operation(name.replace("/", "_"), op)}
    for name, op in ADMIN.items():
        op_id = "admin_" + name.replace("/", "_")
        paths[f"/api/admin/{name}"] = {"post": _operation(op_id, op)}
        if name in readable_admin:
            paths[f"/api/admin/{name}"]["get"] = _operation(op_id + "_get", op, body=False)
    paths["/api/status"] = {"get": _operation("status", Op("Servers, counts, repair and recovery", {}), body=False)}
    whoami = Op("The caller's key (never its secret) and the identity it acts as", {})
    paths["/api/whoami"] = {"get": _operation("whoami_get", whoami, body=False), "post": _operation("whoami", whoami)}
    paths["/api/channel"] = {"get": {
        "operationId": "channel", "summary": "Upgrade to a WebSocket carrying namespace calls (docs/PROTOCOL.md)",
        "responses": {"101": {"description": "Switching protocols: one JSON text message per call and answer."},
                      "400": _error("Not a WebSocket upgrade (EINVAL)."),
                      "401": ERRORS["401"], "403": ERRORS["403"]}}}
    paths["/api/dashboard"] = {"get": _operation("dashboard", Op("Settings of the web dashboard", {}, reply(
        gateway_url={"type": "string", "nullable": True})), body=False)}
    paths["/health"] = {"get": {"operationId": "health", "summary": "Liveness", "responses": {"200": {
        "description": "Up.", "content": {"application/json": {"schema": {
            "type": "object", "required": ["status", "service"],
            "properties": {"status": {"type": "string"}, "service": {"type": "string"},
                           "uptime_s": {"type": "number"}}}}}}}}}
    paths["/openapi.json"] = {"get": {"operationId": "openapi", "summary": "This document", "responses": {
        "200": {"description": "OpenAPI 3.0 document.",
                "content": {"application/json": {"schema": {"type": "object"}}}}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "dfs master", "version": "1.0",
                 "description": "Metadata master of a dfs cluster (docs/PROTOCOL.md). Every operation takes a "
                                "JSON object body; every error is JSON {\"error\": \"ENOENT\", \"message\": "
                                "\"...\"} with the matching status. Unknown fields are ignored; null means "
                                "absent."},
        "paths": paths,
        "components": {"schemas": {"Error": ERROR_SCHEMA, "Attr": ATTR_SCHEMA},
                       "securitySchemes": {"accessKey": {"type": "http", "scheme": "bearer",
                                                         "description": "An access key: dfs_<id>_<secret>"}}},
        "security": [{"accessKey": []}],
    }
