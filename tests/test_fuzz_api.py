"""Schemathesis against the live gateway and master, from their own `/openapi.json`.

Each operation gets a bounded number of generated requests (fixed seed, no shrinking), valid and
invalid; no answer may be a 5xx, every answer must match the documented statuses, content types and
schemas, and both services must still be healthy, with no internal error in their logs, afterwards.
Destructive operations are fine: the module's cluster is its own.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping

import pytest

from dfs.auth import auth_headers
from tests.harness import Cluster, http_json

pytestmark = pytest.mark.timeout(600)

MAX_EXAMPLES = 12
SEED = 20261126
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
#: Not fuzzed (their bodies are checked by the same request table, tested in test_limits.py): a registration
#: with a generated URL would send the master's traffic to that address; fake heartbeats, goodbyes and a
#: drain could take the real chunkservers out of service, and the 502/507 that follow would be no bug.
EXCLUDED_PATHS = ("/api/cs/register", "/api/cs/heartbeat", "/api/cs/goodbye", "/api/admin/decommission")


def request_headers(cluster: Cluster) -> Mapping[str, str]:
    """Headers sent with every fuzzed request: the one place for credentials (the cluster's admin key)."""
    return auth_headers(cluster.admin_key)


def schemathesis(url: str, cluster: Cluster) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "--checks", CHECKS,
            "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--no-shrink", "--workers", "1",
            "--request-timeout", "30", "--suppress-health-check", "all", "--warnings", "off"]
    for path in EXCLUDED_PATHS:
        argv += ["--exclude-path", path]
    for name, value in request_headers(cluster).items():
        argv += ["--header", f"{name}: {value}"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=480, check=False, stdin=subprocess.DEVNULL)


def assert_fuzz_clean(url: str, cluster: Cluster) -> None:
    started = time.monotonic()
    run = schemathesis(url, cluster)
    summary = run.stdout[-6000:]
    print(f"schemathesis {url}: {time.monotonic() - started:.1f}s\n{summary}")
    assert run.returncode == 0, summary + run.stderr[-2000:]
    assert " passed" in run.stdout, summary  # it ran cases
    for service in (cluster.master, cluster.gateway):
        assert service is not None
        status, body = http_json("GET", service.url + "/health")
        assert status == 200 and body["status"] == "ok", (service.name, status, body)
        assert service.running
        log = service.log()
        assert "internal error" not in log and "Traceback" not in log, log[-4000:]


def test_gateway_survives_fuzzing(cluster: Cluster) -> None:
    assert cluster.gateway is not None
    assert_fuzz_clean(cluster.gateway.url, cluster)


def test_master_survives_fuzzing(cluster: Cluster) -> None:
    assert_fuzz_clean(cluster.master_url, cluster)
