"""FUSE client (`dfs mount`): mfusepy operations mapped onto the client library."""
