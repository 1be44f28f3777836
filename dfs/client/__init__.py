"""Client library: `Client` (asyncio) and `SyncClient` (threads), both over the same code."""

from dfs.client.client import Client
from dfs.client.files import FileHandle

__all__ = ["Client", "FileHandle"]
