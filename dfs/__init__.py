"""Shared core of the distributed file system: config, wire protocol, client library, CLI, gateway."""

__version__ = "0.1.0"
