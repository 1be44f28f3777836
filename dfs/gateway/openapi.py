"""`GET /openapi.json`: the gateway's HTTP API as an OpenAPI 3.0 document, written out as data."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dfs.limits import LIST_DEFAULT, LIST_MAX
from dfs.protocol import MAX_GOAL


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(description: str, schema: str, *, array: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"$ref": f"#/components/schemas/{schema}"}
    return {"description": description,
            "content": {"application/json": {"schema": {"type": "array", "items": ref} if array else ref}}}


def _query(name: str, description: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "description": description,
            "schema": {"type": "string"}}


PATH_PARAM: dict[str, Any] = {
    "name": "path", "in": "path", "required": True,
    "description": "File-system path below the root: names separated by literal '/' (photos/2024/cat.jpg). "
                   "Each name is percent-decoded once; '.', '..', NUL, an encoded '/' (%2F), an empty name "
                   "('//') and names over 255 bytes are refused with 400.",
    "schema": {"type": "string"}, "example": "cat.jpg",
}

GOAL = _query("goal", "Replication goal of the new file(s) (default: the cluster's).",
              {"type": "integer", "minimum": 1, "maximum": MAX_GOAL})

FILE_HEADERS: dict[str, Any] = {
    "ETag": {"description": 'Strong validator "inode-mtime_ns-size".', "schema": {"type": "string"}},
    "Last-Modified": {"description": "HTTP date of the last modification.", "schema": {"type": "string"}},
    "Accept-Ranges": {"description": "Always `bytes`.", "schema": {"type": "string"}},
    "Content-Length": {"description": "Bytes in the body.", "schema": {"type": "integer"}},
}

COMMON_ERRORS: dict[str, Any] = {
    "400": _error("Bad path, name or parameter (EINVAL, ENAMETOOLONG)."),
    "401": _error("No access key, or one not in force (ENOKEY, EKEYREJECTED, EKEYEXPIRED, EKEYREVOKED)."),
    "403": _error("The key's user may not do this (EACCES, EPERM), or its scope is too low."),
    "404": _error("No such file or folder (ENOENT)."),
    "409": _error("Conflict: EISDIR, ENOTDIR, ENOTEMPTY, EEXIST, EBUSY."),
    "500": _error("Internal error."),
    "502": _error("The cluster failed to serve the data (EIO)."),
    "503": _error("The cluster is busy or unavailable (EAGAIN)."),
}

UPLOAD_ERRORS: dict[str, Any] = {
    **COMMON_ERRORS,
    "413": _error("Body larger than the gateway's --max-upload (EFBIG); checked up front and while streaming."),
    "507": _error("No space left in the cluster (ENOSPC)."),
}

FS_OPERATIONS: dict[str, Any] = {
    "get": {
        "operationId": "read",
        "summary": "Download a file, or list a folder",
        "description": "A file streams with Range support (one range; several are answered with the whole "
                       "file) and conditional requests. A folder answers a JSON page of its entries, sorted "
                       "by name; pass the returned `next` as `after` to get the following page.",
        "parameters": [
            PATH_PARAM,
            _header("Range", "bytes=a-b, bytes=a- or bytes=-n (files only)."),
            _header("If-None-Match", "ETag(s); a match answers 304."),
            _header("If-Modified-Since", "HTTP date; a file not modified since answers 304."),
            _header("If-Range", "ETag or date; the Range applies only while it still matches."),
            _query("limit", "Folder listing: entries per page.",
                   {"type": "integer", "minimum": 1, "maximum": LIST_MAX, "default": LIST_DEFAULT}),
            _query("after", "Folder listing: start after this name (the previous page's `next`); "
                            "empty: from the start.", {"type": "string", "maxLength": 1024}),
        ],
        "responses": {
            "200": {
                "description": "The file's bytes (Content-Type guessed from the name, else "
                               "application/octet-stream), or a folder listing (JSON).",
                "headers": FILE_HEADERS,
                "content": {
                    "*/*": {"schema": {"type": "string", "format": "binary"}},
                    "application/json": {"schema": {"$ref": "#/components/schemas/Listing"}},
                },
            },
            "206": {
                "description": "The requested byte range of the file.",
                "headers": {**FILE_HEADERS, "Content-Range": {"description": "bytes a-b/size",
                                                                "schema": {"type": "string"}}},
                "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
            },
            "304": {"description": "Not modified (If-None-Match / If-Modified-Since).", "headers": FILE_HEADERS},
            **COMMON_ERRORS,
            "416": {**_error("The range selects no byte of the file (ERANGE)."),
                    "headers": {"Content-Range": {"description": "bytes */size", "schema": {"type": "string"}}}},
        },
    },
    "head": {
        "operationId": "stat",
        "summary": "The headers a GET would send, without the body",
        "parameters": [PATH_PARAM, _header("Range", "As for GET."), _header("If-None-Match", "As for GET.")],
        "responses": {
            "200": {"description": "Headers of the file (or folder listing).", "headers": FILE_HEADERS},
            "206": {"description": "Headers of the range.", "headers": FILE_HEADERS},
            "304": {"description": "Not modified."},
            "400": {"description": "Bad path or parameter."},
            "401": {"description": "No access key, or one not in force."},
            "403": {"description": "Not permitted."},
            "404": {"description": "No such file or folder."},
            "416": {"description": "Range not satisfiable."},
        },
    },
    "put": {
        "operationId": "upload",
        "summary": "Store the request body as a file (streamed; atomic replace)",
        "description": "The body (Content-Length or chunked) streams to a hidden temporary file renamed over the "
                       "path once complete, so readers see the old file or the new one. `curl -T FILE URL`.",
        "parameters": [PATH_PARAM, GOAL],
        "requestBody": {"required": True,
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {
            "201": _json("Created.", "Entry"),
            "200": _json("Replaced an existing file.", "Entry"),
            **UPLOAD_ERRORS,
        },
    },
    "post": {
        "operationId": "postOperation",
        "summary": "Multipart upload into a folder, mkdir or rename",
        "description": "Without `op`: a multipart/form-data body whose file parts are stored as "
                       "FOLDER/<part filename> (`curl -F file=@x URL/`). With `op=mkdir` (`parents=true` for -p) "
                       "or `op=rename&to=/new/path`: no body.",
        "parameters": [
            PATH_PARAM,
            _query("op", "The operation; omit for a multipart upload.",
                   {"type": "string", "enum": ["mkdir", "rename"]}),
            _query("parents", "mkdir: make missing parents, accept an existing folder.", {"type": "boolean"}),
            _query("to", "rename: the new absolute file-system path (not a URL), e.g. /a/b.", {"type": "string"}),
            _query("noreplace", "rename: fail with 409 EEXIST rather than replace the target.", {"type": "boolean"}),
            GOAL,
        ],
        "requestBody": {
            "required": False,
            "content": {"multipart/form-data": {"schema": {
                "type": "object", "additionalProperties": {"type": "string", "format": "binary"}}}},
        },
        "responses": {
            "201": {"description": "Files uploaded (a JSON list) or folder made (an entry).",
                    "content": {"application/json": {"schema": {"oneOf": [
                        {"type": "array", "items": {"$ref": "#/components/schemas/Entry"}},
                        {"$ref": "#/components/schemas/Entry"}]}}}},
            "200": _json("Renamed; the entry at its new path.", "Entry"),
            **UPLOAD_ERRORS,
        },
    },
    "delete": {
        "operationId": "remove",
        "summary": "Delete a file or an empty folder (a whole tree with recursive=true)",
        "parameters": [PATH_PARAM, _query("recursive", "Delete a folder and everything in it.", {"type": "boolean"})],
        "responses": {
            "200": {"description": "Deleted.", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"deleted": {"type": "string"}}, "required": ["deleted"]}}}},
            **COMMON_ERRORS,
        },
    },
}


def _root_operations() -> dict[str, Any]:
    """`/fs` is the root folder: the same operations without the path parameter (PUT answers 409 EISDIR,
    DELETE 400: the root can be neither replaced nor removed)."""
    ops: dict[str, Any] = {}
    for method, op in FS_OPERATIONS.items():
        ops[method] = {**op, "operationId": op["operationId"] + "Root",
                       "parameters": [p for p in op["parameters"] if p is not PATH_PARAM]}
    return ops


ENTRY_PROPERTIES: dict[str, Any] = {
    "name": {"type": "string"},
    "type": {"type": "string", "enum": ["file", "dir", "symlink", "fifo", "socket", "chardev", "blockdev"]},
    "size": {"type": "integer", "format": "int64"},
    "mode": {"type": "integer", "description": "st_mode: type bits and permissions."},
    "mtime_ns": {"type": "integer", "format": "int64"},
    "inode": {"type": "integer", "format": "int64"},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "dfs HTTP gateway",
        "version": "1.0",
        "description": "Files and folders of a dfs cluster over plain HTTP. Every error is JSON "
                       '{"error": "ENOENT", "message": "..."} with the matching status.',
    },
    "paths": {
        "/fs/{path}": FS_OPERATIONS,
        "/fs": _root_operations(),
        "/health": {"get": {
            "operationId": "health", "summary": "Liveness",
            "responses": {"200": {"description": "Up.", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"status": {"type": "string"}, "service": {"type": "string"},
                                                 "uptime_s": {"type": "number"}}}}}}},
        }},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus metrics (docs/METRICS.md)",
            "responses": {"200": {"description": "Prometheus text format 0.0.4.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.0 document.",
                                  "content": {"application/json": {"schema": {"type": "object"}}}}},
        }},
    },
    "security": [{"accessKey": []}, {"basicKey": []}],
    "components": {
        "securitySchemes": {
            "accessKey": {"type": "http", "scheme": "bearer", "description": "An access key: dfs_<id>_<secret>"},
            "basicKey": {"type": "http", "scheme": "basic", "description": "Any user name, the access key as password"},
        },
        "schemas": {
            "Error": {
                "type": "object", "required": ["error", "message"],
                "properties": {"error": {"type": "string", "description": "errno name", "example": "ENOENT"},
                               "message": {"type": "string", "example": "no such file: /a/b"}},
            },
            "ListEntry": {"type": "object", "properties": ENTRY_PROPERTIES, "required": list(ENTRY_PROPERTIES)},
            "Listing": {
                "type": "object", "required": ["path", "entries", "next"],
                "properties": {
                    "path": {"type": "string"},
                    "entries": {"type": "array", "items": {"$ref": "#/components/schemas/ListEntry"}},
                    "next": {"type": "string", "nullable": True,
                             "description": "Pass as `after` for the next page; null at the end."},
                },
            },
            "Entry": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"}, **ENTRY_PROPERTIES,
                    "nlink": {"type": "integer"}, "ctime_ns": {"type": "integer", "format": "int64"},
                    "goal": {"type": "integer"}, "etag": {"type": "string"},
                    "from": {"type": "string", "description": "rename only: the old path"},
                },
                "required": ["path", *ENTRY_PROPERTIES],
            },
        },
    },
}


async def openapi(_: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def add_openapi(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi)
