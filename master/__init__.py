"""Metadata master: namespace, chunk placement, leases and chunkserver registry."""
