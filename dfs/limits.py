"""Every input limit of the HTTP services, in one place (docs/PROTOCOL.md "Limits").

The web layer (dfs/web.py) enforces the transport limits for every service; the request tables
(master/api_schema.py, the gateway and chunkserver handlers) use the value bounds.
"""

from __future__ import annotations

from dfs.names import PATH_MAX

# -- HTTP transport (aiohttp's parser; over the limit: 400 before a handler runs) --------------------------------
#: Request line ("GET /fs/... HTTP/1.1"): a PATH_MAX path percent-encoded in full still fits.
MAX_REQUEST_LINE = 3 * PATH_MAX + 1024
#: One header line (name and value): bearer keys, chunk tokens and replication chains fit.
MAX_HEADER_FIELD = 8190
#: Header lines per request.
MAX_HEADERS = 128

# -- JSON bodies --------------------------------------------------------------------------------------------------
#: A JSON request body (413 beyond); a chunkserver's registration may be larger (master/app.py).
MAX_JSON_BODY = 4 * 1024 * 1024
#: Nesting of arrays and objects in a JSON body (400 beyond).
MAX_JSON_DEPTH = 32

# -- values -------------------------------------------------------------------------------------------------------
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1  # inodes, chunk and server ids, versions, sizes, times in ns
UID_MAX = 2**32 - 1
#: Entries of one folder listing page (master readdir, gateway GET of a folder).
LIST_DEFAULT = 1000
LIST_MAX = 10_000
#: Items in one list field of a JSON body (e.g. `held`), unless the field says less.
MAX_LIST_ITEMS = 100_000
#: A string field of a JSON body that is neither a path nor a name (client ids, URLs, node names).
MAX_STRING = 4096
