"""The gateway's Prometheus metrics (docs/METRICS.md): bytes through the file API. Requests are counted
by dfs.metrics, the cluster calls of its client by dfs/client/metrics.py."""

from __future__ import annotations

from prometheus_client import Counter

UPLOADED_BYTES = Counter("dfs_gateway_uploaded_bytes", "File bytes received (PUT bodies and form uploads)")
DOWNLOADED_BYTES = Counter("dfs_gateway_downloaded_bytes", "File bytes sent (GET bodies)")
