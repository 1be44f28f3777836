"""`GET /metrics` on the master, the chunkservers and the gateway: scraped over HTTP, parsed with
prometheus_client's parser, before and after real work, and the figures must have moved by it."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from dfs.auth import auth_headers
from tests.harness import TEST_ADMIN_KEY, Cluster, http_json
from tests.scrape import Samples, label_values, scrape, value

MiB = 1024 * 1024
GOAL = 2
T = TypeVar("T")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Goal 2 on three chunkservers (a lost one can be rebuilt), a fast dead timeout, a scrub pass a second,
    a small capacity (so that a few MiB make a difference in utilisation for the balancer)."""
    c = Cluster(root=tmp_path_factory.mktemp("metrics"), goal=GOAL,
                master_args=["--dead-timeout", "3", "--heartbeat-interval", "0.3"],
                chunkserver_args=["--scrub-interval", "1", "--capacity", "64MiB"])
    try:
        c.start()
        yield c
    finally:
        c.stop()


def wait_for(what: str, probe: Callable[[], T], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def request(method: str, url: str, data: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={**auth_headers(TEST_ADMIN_KEY), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def all_chunkservers(cluster: Cluster) -> list[Samples]:
    return [scrape(cs.url + "/metrics") for cs in cluster.chunkservers if cs.running]


def total(pages: list[Samples], name: str, **labels: str) -> float:
    return sum(value(page, name, **labels) for page in pages)


def test_every_service_serves_prometheus_text(cluster: Cluster) -> None:
    assert cluster.gateway is not None
    for service in [cluster.master, cluster.gateway, *cluster.chunkservers]:
        assert service is not None
        samples = scrape(service.url + "/metrics")
        assert ("dfs_http_requests_total" in {name for name, _ in samples}), service.name
    master = scrape(cluster.master_url + "/metrics")
    assert value(master, "dfs_master_chunkservers", state="live") == 3
    assert value(master, "dfs_master_leases") == 0


def test_a_write_and_a_read_move_the_counters(cluster: Cluster) -> None:
    assert cluster.gateway is not None
    gw, master_url = cluster.gateway.url, cluster.master_url
    size = 2 * MiB + 12345  # three chunks
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    before = {"gw": scrape(gw + "/metrics"), "master": scrape(master_url + "/metrics"),
              "cs": all_chunkservers(cluster)}

    assert request("POST", gw + "/fs/counted?op=mkdir")[0] == 201
    assert request("PUT", gw + "/fs/counted/file.bin", data)[0] == 201
    status, body = request("GET", gw + "/fs/counted/file.bin")
    assert status == 200 and body == data

    after = {"gw": scrape(gw + "/metrics"), "master": scrape(master_url + "/metrics"),
             "cs": all_chunkservers(cluster)}

    def moved(page: str, name: str, **labels: str) -> float:
        if page == "cs":
            return total(after["cs"], name, **labels) - total(before["cs"], name, **labels)
        return value(after[page], name, **labels) - value(before[page], name, **labels)

    # the gateway: its own requests by route and method, the op of a POST, the bytes both ways
    assert moved("gw", "dfs_http_requests_total", operation="/fs/{path}", method="PUT", status="2xx") == 1
    assert moved("gw", "dfs_http_requests_total", operation="/fs/{path}", method="GET", status="2xx") == 1
    assert moved("gw", "dfs_http_requests_total", operation="/fs/{path}?op=mkdir", method="POST", status="2xx") == 1
    assert moved("gw", "dfs_http_request_duration_seconds_count", operation="/fs/{path}", method="PUT") == 1
    assert moved("gw", "dfs_gateway_uploaded_bytes_total") == size
    assert moved("gw", "dfs_gateway_downloaded_bytes_total") == size
    assert moved("gw", "dfs_client_chunk_bytes_total", direction="written") >= size
    assert moved("gw", "dfs_client_chunk_bytes_total", direction="read") >= size
    assert moved("gw", "dfs_client_master_calls_total", operation="mkdir", result="ok") == 1
    assert moved("gw", "dfs_client_master_calls_total", operation="lease") >= 3

    # the master: the calls the gateway made, and the transactions behind them
    assert moved("master", "dfs_http_requests_total", operation="/api/mkdir", status="2xx") == 1
    assert moved("master", "dfs_http_requests_total", operation="/api/create", status="2xx") == 1
    assert moved("master", "dfs_http_request_duration_seconds_count", operation="/api/lease") >= 3
    assert moved("master", "dfs_master_db_seconds_count", kind="write") >= 5  # mkdir, create, 3 leases, commit
    assert moved("master", "dfs_master_db_seconds_count", kind="read") >= 1
    assert value(after["master"], "dfs_master_db_seconds_bucket", kind="write", le="+Inf") == \
        value(after["master"], "dfs_master_db_seconds_count", kind="write")

    # the chunkservers: every replica stored the bytes, the chain forwarded the two full chunks (the
    # last 12,345 bytes went from the gateway to each replica: a fan-out), a replica served them (to a
    # gateway on their host: by handing it the chunks' files, a short-circuit read)
    assert moved("cs", "dfs_chunkserver_written_bytes_total", kind="write") >= GOAL * size
    assert moved("cs", "dfs_chunkserver_forwarded_bytes_total") >= (GOAL - 1) * 2 * MiB
    assert moved("cs", "dfs_chunkserver_short_circuit_opens_total", result="ok") >= 1
    assert moved("gw", "dfs_client_short_circuit_reads_total") >= 1
    assert moved("cs", "dfs_http_requests_total", operation="/chunks/{id}", method="PUT", status="2xx") >= 3 * GOAL


def test_chunk_states_match_the_cluster(cluster: Cluster) -> None:
    assert cluster.gateway is not None
    assert request("PUT", cluster.gateway.url + "/fs/states.bin", b"s" * (MiB + 1))[0] == 201
    _, status = http_json("GET", cluster.master_url + "/api/status")
    chunks, inodes, dirs = status["chunks"], status["inodes"], status["directories"]
    assert chunks >= 2

    def settled() -> Samples | None:  # the placement scan behind the gauges is at most a few seconds old
        page = scrape(cluster.master_url + "/metrics")
        return page if value(page, "dfs_master_chunks", state="healthy") == chunks else None

    page = wait_for(f"{chunks} healthy chunks in the master's metrics", settled, timeout=20)
    assert value(page, "dfs_master_chunks") == chunks  # every state together
    assert value(page, "dfs_master_inodes", type="directory") == dirs
    assert value(page, "dfs_master_inodes") == inodes
    assert value(page, "dfs_master_space_bytes", kind="used") > 0


def test_scrubber_progress(cluster: Cluster) -> None:
    stored = total(all_chunkservers(cluster), "dfs_chunkserver_space_bytes", kind="used")
    assert stored > 0
    start = all_chunkservers(cluster)
    passes = total(start, "dfs_chunkserver_scrub_passes_total")
    verified = total(start, "dfs_chunkserver_scrub_bytes_total")

    def two_passes_more() -> list[Samples] | None:  # the second began after `start`: it verified everything
        pages = all_chunkservers(cluster)
        return pages if all(value(p, "dfs_chunkserver_scrub_passes_total") >=
                            value(s, "dfs_chunkserver_scrub_passes_total") + 2 for p, s in zip(pages, start,
                                                                                              strict=True)) else None

    pages = wait_for("two more scrub passes on every chunkserver", two_passes_more)
    assert total(pages, "dfs_chunkserver_scrub_passes_total") >= passes + 2 * len(pages)
    assert total(pages, "dfs_chunkserver_scrub_bytes_total") - verified >= stored
    assert total(pages, "dfs_chunkserver_scrub_chunks_total") >= total(pages, "dfs_chunkserver_chunks")
    assert total(pages, "dfs_chunkserver_scrub_corrupt_total") == 0
    for page in pages:
        assert 0 <= value(page, "dfs_chunkserver_scrub_pass_progress") <= 1


def test_labels_never_carry_paths_or_ids(cluster: Cluster) -> None:
    cs = cluster.chunkservers[0].url
    token = cluster.token_header("read", 987654321, 1)
    assert request("GET", cs + "/chunks/987654321?version=1", headers=token)[0] in (404, 503)
    assert request("GET", cs + "/no/such/place-4242")[0] == 404
    assert request("PROPFIND", cs + "/chunks")[0] == 405
    page = scrape(cs + "/metrics")
    operations = label_values(page, "dfs_http_requests_total", "operation")
    assert "unmatched" in operations and "/chunks/{id}" in operations
    assert not any("987654321" in op or "4242" in op for op in operations)
    assert "OTHER" in label_values(page, "dfs_http_requests_total", "method")
    assert "PROPFIND" not in label_values(page, "dfs_http_requests_total", "method")


def test_balance_and_decommission_are_counted(cluster: Cluster) -> None:
    """An empty chunkserver joins: a balance moves replicas onto it, then a decommission drains it."""
    assert cluster.gateway is not None
    admin = cluster.master_url + "/api/admin/"
    assert request("PUT", cluster.gateway.url + "/fs/spread.bin", b"p" * (4 * MiB))[0] == 201
    newcomer = cluster.add_chunkserver()
    cluster.wait_servers(4)
    before = scrape(cluster.master_url + "/metrics")
    status, started = http_json("POST", admin + "balance/start", {"threshold": 1})
    assert status == 200, started

    def ended() -> dict | None:
        job = http_json("GET", admin + "balance")[1]
        return job if job["state"] not in ("running", "stopping") else None

    job = wait_for("the balance to end", ended)
    assert job["state"] == "done" and job["moves_done"] >= 1, job
    page = scrape(cluster.master_url + "/metrics")
    assert value(page, "dfs_master_balance_running") == 0
    assert value(page, "dfs_master_balance_moves", state="done") == job["moves_done"]
    assert value(page, "dfs_master_balance_moves", state="planned") == job["moves_planned"]
    assert value(page, "dfs_master_balance_moves", state="pending") == 0
    assert value(page, "dfs_master_balance_moved_bytes") == job["bytes_moved"] > 0
    assert value(page, "dfs_master_replica_copies_total", result="done") - \
        value(before, "dfs_master_replica_copies_total", result="done") >= job["moves_done"]

    status, drain = http_json("POST", admin + "decommission", {"node": newcomer.url})
    assert status == 200, drain
    server = str(drain["server_id"])

    def retired() -> Samples | None:
        page = scrape(cluster.master_url + "/metrics")
        return page if value(page, "dfs_master_chunkservers", state="decommissioned") == 1 else None

    page = wait_for("the newcomer decommissioned", retired)
    assert value(page, "dfs_master_decommission_moves", server=server, result="moved") >= job["moves_done"]
    assert value(page, "dfs_master_decommission_moves", server=server, result="failed") == 0
    assert value(page, "dfs_master_chunkservers", state="live") == 3
    assert value(page, "dfs_master_decommission_left") == 0  # only draining servers are listed
    assert value(page, "dfs_master_moves_in_flight") == 0


def test_a_lost_chunkserver_is_counted_and_its_chunks_copied(cluster: Cluster) -> None:
    """Last: it kills a chunkserver of the module's cluster."""
    assert cluster.gateway is not None
    assert request("PUT", cluster.gateway.url + "/fs/repair.bin", b"r" * (3 * MiB))[0] == 201
    victim = max(cluster.chunkservers, key=lambda cs: value(scrape(cs.url + "/metrics"), "dfs_chunkserver_chunks"))
    before = scrape(cluster.master_url + "/metrics")
    copied_before = total(all_chunkservers(cluster), "dfs_chunkserver_written_bytes_total", kind="copy")
    lost = value(scrape(victim.url + "/metrics"), "dfs_chunkserver_chunks")
    assert lost > 0
    victim.kill()

    def rebuilt() -> Samples | None:
        page = scrape(cluster.master_url + "/metrics")
        done = value(page, "dfs_master_replica_copies_total", result="done") - \
            value(before, "dfs_master_replica_copies_total", result="done")
        healthy = value(page, "dfs_master_chunks", state="healthy") == value(page, "dfs_master_chunks")
        return page if done >= lost and healthy and value(page, "dfs_master_chunks") > 0 else None

    page = wait_for("the lost replicas copied again", rebuilt, timeout=60)
    assert value(page, "dfs_master_chunkservers", state="dead") == 1
    assert value(page, "dfs_master_chunkservers", state="live") == 2
    assert value(page, "dfs_master_replica_copied_bytes_total") > 0
    assert value(page, "dfs_master_repair_last_scan_timestamp_seconds") > 0
    assert total(all_chunkservers(cluster), "dfs_chunkserver_written_bytes_total", kind="copy") > copied_before
