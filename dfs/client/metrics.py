"""The client library's Prometheus metrics (docs/METRICS.md): calls to the master and bytes to and from
chunkservers. Exported by the processes built on the library that serve /metrics (gateway, mount)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

from dfs.metrics import LATENCY_BUCKETS

MASTER_CALLS = Counter("dfs_client_master_calls", "Calls to the master, by operation and result (error: the "
                       "call raised, after its retries)", ["operation", "result"])
MASTER_SECONDS = Histogram("dfs_client_master_call_seconds", "Time of a call to the master, retries included",
                           ["operation"], buckets=LATENCY_BUCKETS)
CHUNK_BYTES = Counter("dfs_client_chunk_bytes", "Bytes read from and written to chunkservers (a write counts "
                      "once, however long its chain)", ["direction"])
READ_BYTES = CHUNK_BYTES.labels("read")
WRITTEN_BYTES = CHUNK_BYTES.labels("written")
REPLICA_FAILURES = Counter("dfs_client_replica_failures", "Replicas that failed a read and were reported to the "
                           "master, by problem", ["problem"])
SHORT_CIRCUIT_READS = Counter("dfs_client_short_circuit_reads", "Pieces of chunks read and verified straight "
                              "from the files of a replica on this host (dfs/client/localread.py)")
SHORT_CIRCUIT_FALLBACKS = Counter("dfs_client_short_circuit_fallbacks", "Short-circuit reads given up for the HTTP "
                                  "read of the same range, by reason", ["reason"])

_calls: dict[tuple[str, bool], tuple[Any, Any]] = {}


def observe_call(operation: str, ok: bool, seconds: float) -> None:
    """One master call (`operation` is one of the protocol's op names: a fixed set)."""
    series = _calls.get((operation, ok))
    if series is None:
        series = _calls[(operation, ok)] = (MASTER_CALLS.labels(operation, "ok" if ok else "error"),
                                            MASTER_SECONDS.labels(operation))
    series[0].inc()
    series[1].observe(seconds)
