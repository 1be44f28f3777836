"""The HTTP gateway: the file system over plain HTTP, usable with curl alone.

`app.create_app` builds the aiohttp application, `files` holds the `/fs/...` handlers, `paths`,
`conditional` and `bodies` the HTTP details they rely on, `openapi` the API description and
`service.run_gateway` the entry point of `dfs gateway`.
"""
