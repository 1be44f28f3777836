"""Chunkserver: stores replicated chunks with block checksums and serves them over HTTP."""
