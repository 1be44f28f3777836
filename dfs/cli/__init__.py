"""The `dfs` command line: services, file commands and (later) `dfs admin`."""
