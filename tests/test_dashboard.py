"""The master's web dashboard (master/dashboard): its HTTP face, and the page in Debian's headless Chromium.

The browser tests drive /usr/bin/chromium with Playwright (its Python package ships the driver; no
browser is ever downloaded): without a key the page shows only its sign-in panel; signed in with the
admin key it loads without console errors, lists the live chunkservers, browses to a file whose download
link (on the gateway, which asks for the key by basic auth) returns its bytes, and shows a running
balance's progress. A wrong key keeps the panel with an error; an rw key browses files and is told that
the cluster's status needs an admin key. Screenshots are written to artifacts/ at the repository's root:
dashboard.png (signed in as admin), dashboard-signin.png (a refused key), dashboard-rw.png (an rw key).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import tempfile
import tomllib
import urllib.request
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from dfs.auth import auth_headers
from dfs.master.dashboard import ASSETS
from tests.harness import TEST_ADMIN_KEY, Cluster, http_json

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
DASHBOARD = ROOT / "master" / "dashboard"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 30_000

#: A file name a careless page would turn into markup, and with characters that must be escaped in URLs.
HOSTILE = "<img src=x onerror=window.__xss=1> #1 100%?.bin"
FOLDER = "reports & <i>data"

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (.ci/run installs it; CI fails instead of skipping)",
)


def raw_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET without following redirects: (status, headers with lower-case names, body)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def basic_auth(key: str, user: str = "me") -> dict[str, str]:
    """What a browser sends once its user typed the key as the password of the gateway's Basic prompt."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}


def put(url: str, data: bytes) -> None:
    req = urllib.request.Request(url, data=data, method="PUT", headers=auth_headers(TEST_ADMIN_KEY))
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status in (200, 201), resp.status


def fs_url(gateway: str, *names: str) -> str:
    return gateway + "/fs/" + "/".join(quote(n, safe="") for n in names)


# -- the page's files and routes (no browser) ----------------------------------------------------------

@pytest.fixture(scope="module")
def bare_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A master alone, started without --gateway-url."""
    c = Cluster(root=tmp_path_factory.mktemp("bare"))
    try:
        c.start_master()
        yield c
    finally:
        c.stop()


def test_package_data_ships_every_asset() -> None:
    """A non-editable install (a wheel) carries the page: pyproject's package-data covers every file."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["dfs.master.dashboard"]
    for name in ASSETS:
        assert (DASHBOARD / name).is_file(), name
        assert any(fnmatch(name, p) for p in patterns), f"{name} is not in pyproject's package-data"


def test_assets_name_no_other_host() -> None:
    """No CDN, font or script from elsewhere: no absolute URL in any text asset."""
    for name in ASSETS:
        if name.endswith((".html", ".js", ".css")):
            text = (DASHBOARD / name).read_text()
            assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name
            assert not re.search(r"\.(inner|outer)HTML\b|insertAdjacentHTML|document\.write", text), name


def test_routes_types_and_caching(bare_master: Cluster) -> None:
    base = bare_master.master_url
    status, headers, _ = raw_get(base + "/")
    assert status == 302 and headers["location"] == "/dashboard/"
    status, headers, _ = raw_get(base + "/dashboard")
    assert status == 302 and headers["location"] == "/dashboard/"
    for path, kind in [("/dashboard/", "text/html"), ("/dashboard/app.js", "text/javascript"),
                       ("/dashboard/style.css", "text/css"), ("/dashboard/favicon.png", "image/png")]:
        status, headers, body = raw_get(base + path)
        assert status == 200 and headers["content-type"].startswith(kind), (path, headers)
        assert headers["cache-control"] == "no-cache" and headers["etag"], path
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert body
        again, headers304, body304 = raw_get(base + path, {"If-None-Match": headers["etag"]})
        assert again == 304 and body304 == b"" and headers304["etag"] == headers["etag"]
    status, _, body = raw_get(base + "/dashboard/../meta.db")
    assert status == 404
    status, headers, body = raw_get(base + "/dashboard/secret.txt")
    assert status == 404 and headers["content-type"].startswith("application/json") and b"ENOENT" in body
    assert http_json("GET", base + "/api/dashboard") == (200, {"gateway_url": None})


def test_master_refuses_a_bad_gateway_url(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "dfs", "master", "--data", str(tmp_path), "--gateway-url",
                           "ftp://x"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--gateway-url" in done.stderr


# -- in the browser -------------------------------------------------------------------------------------

class Browser:
    """A fresh headless Chromium profile with one page; console errors and failed requests are kept."""

    def __init__(self, http_credentials: dict[str, str] | None = None) -> None:
        from playwright.sync_api import sync_playwright

        self.profile = tempfile.mkdtemp(prefix="dfs-chromium-")
        self.pw = sync_playwright().start()
        try:
            self.context = self.pw.chromium.launch_persistent_context(
                self.profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
                viewport={"width": 1360, "height": 900}, http_credentials=http_credentials)  # type: ignore[arg-type]
        except BaseException:
            self.pw.stop()
            raise
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} {r.failure}"))

    def sign_in(self, key: str) -> None:
        """Type `key` into the sign-in panel, as a user would."""
        self.page.locator("#signin").wait_for(state="visible", timeout=WAIT_MS)
        self.page.fill("#signin-key", key)
        self.page.click("#signin-button")

    def stored(self) -> dict[str, Any]:
        """Where the page keeps things: session and local storage, cookies."""
        return {"session": self.page.evaluate("() => ({...sessionStorage})"),
                "local": self.page.evaluate("() => ({...localStorage})"), "cookies": self.context.cookies()}

    def close(self) -> None:
        try:
            self.context.close()
        finally:
            self.pw.stop()
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def browser() -> Iterator[Browser]:
    b = Browser()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Master (linked to the gateway), three chunkservers offering 32 MiB each, a gateway; 1 MiB chunks."""
    c = Cluster(root=tmp_path_factory.mktemp("dash"), chunkserver_args=["--capacity", "32MiB"])
    try:
        c.start(chunkservers=3)
        yield c
    finally:
        c.stop()


@pytest.fixture
def gateway_browser(cluster: Cluster) -> Iterator[Browser]:
    """A browser whose user answers the gateway's password prompt with the admin key (any user name)."""
    assert cluster.gateway is not None and cluster.admin_key
    b = Browser({"username": "me", "password": cluster.admin_key, "origin": cluster.gateway.url})
    try:
        yield b
    finally:
        b.close()


@needs_chromium
def test_dashboard_in_chromium(cluster: Cluster, gateway_browser: Browser) -> None:
    assert cluster.gateway is not None and cluster.admin_key
    browser, key, gateway = gateway_browser, cluster.admin_key, cluster.gateway.url
    data = os.urandom(5 * 1024 * 1024 + 12345)  # six chunks, goal 3
    status, _ = http_json("POST", fs_url(gateway, FOLDER) + "?op=mkdir")
    assert status in (200, 201)
    put(fs_url(gateway, FOLDER, HOSTILE), data)
    put(fs_url(gateway, "notes.txt"), b"hello\n")
    page = browser.page
    api_calls: list[str] = []
    page.on("request", lambda r: "/api/" in r.url and api_calls.append(r.url))

    # no key yet: the sign-in panel, and no data nor any call for it
    page.goto(cluster.master_url + "/")
    assert page.url == cluster.master_url + "/dashboard/"
    page.locator("#signin").wait_for(state="visible", timeout=WAIT_MS)
    assert page.locator("#main").is_hidden() and page.locator("#who").is_hidden()
    assert page.locator("#signin-key").get_attribute("type") == "password"
    assert "DATA/admin.key" in page.inner_text("#signin") and "dfs admin keys create" in page.inner_text("#signin")
    assert page.locator("#nodes-body tr").count() == 0 and page.locator("#files-body tr").count() == 0
    assert api_calls == []

    browser.sign_in(key)
    page.wait_for_function("() => document.querySelectorAll('#nodes-body tr[data-state=live]').length === 3",
                           timeout=WAIT_MS)
    assert page.locator("#signin").is_hidden()
    assert page.inner_text("#who-name") == "admin (admin)"
    # the key is kept for this tab only: not in local storage, a cookie or the URL
    assert browser.stored() == {"session": {"dfs.dashboard.key": key}, "local": {}, "cookies": []}
    assert key not in page.url
    rows = page.locator("#nodes-body tr").all_inner_texts()
    for cs in cluster.chunkservers:
        assert any(cs.url in row and "live" in row for row in rows), (cs.url, rows)
    assert page.inner_text("#sum-nodes") == "3 / 3 live"
    page.wait_for_function("() => document.getElementById('sum-files').textContent === '2'", timeout=WAIT_MS)
    assert page.inner_text("#health-badge") == "healthy"
    assert page.locator("#activity").is_hidden()  # no job runs
    assert page.locator("#cluster-denied").is_hidden()

    # the file browser: the root, then the folder, then the file's download link on the gateway
    page.locator("#files-body tr[data-name='notes.txt']").wait_for(timeout=WAIT_MS)
    page.locator("#files-body a.dir", has_text=FOLDER).click()
    row = page.locator("#files-body tr", has=page.locator("td.name", has_text=HOSTILE))
    row.wait_for(timeout=WAIT_MS)
    assert page.evaluate("window.__xss") is None  # the name stayed text
    assert HOSTILE in row.locator("td.name").inner_text()
    assert page.locator("#crumbs").inner_text().replace("\n", "") == "/" + FOLDER
    assert page.locator("#gateway-note").is_hidden()
    assert "your access key as the password" in page.inner_text("#download-note")
    href = row.locator("a.download").get_attribute("href")
    assert href == fs_url(gateway, FOLDER, HOSTILE), href
    # a plain link carries no key: the gateway asks for one, Basic in a header of its own (the browser's
    # password prompt; a browser does not read a Basic challenge after Bearer in one header), and asks
    # again for a key the master refuses (the user mistyped it)...
    for wrong in ({}, basic_auth("dfs_0123456789abcdef_" + "x" * 43)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(href, headers=wrong), timeout=10)
        assert refused.value.code == 401
        assert 'Basic realm="dfs"' in refused.value.headers.get_all("WWW-Authenticate"), refused.value.headers
    # ...and serves the file to the key given as the password (or as a Bearer token)
    assert raw_get(href, basic_auth(key))[::2] == (200, data)
    assert raw_get(href, auth_headers(key))[::2] == (200, data)
    # in the browser, whose user answers the prompt with the key: the link's file arrives whole
    with page.expect_download(timeout=WAIT_MS) as started:
        row.locator("a.download").click()
    assert Path(started.value.path()).read_bytes() == data

    # a balance onto a new, empty chunkserver, throttled to about 6 s per 1 MiB move, shows its progress
    cluster.add_chunkserver()
    cluster.wait_servers(4)
    status, plan = http_json("POST", cluster.master_url + "/api/admin/balance/plan", {"threshold": 1})
    assert status == 200 and len(plan["moves"]) >= 3, plan
    status, job = http_json("POST", cluster.master_url + "/api/admin/balance/start",
                            {"threshold": 1, "max_bandwidth": 170 * 1024})
    assert status == 200 and job["state"] == "running", job
    try:
        page.locator("#balance-progress").wait_for(state="visible", timeout=WAIT_MS)
        page.wait_for_function("() => document.getElementById('balance-progress').value > 0", timeout=WAIT_MS)
        assert page.inner_text("#balance-state") in ("running", "stopping")
        assert page.locator("#nodes-body tr").count() == 4
        page.mouse.move(0, 0)  # no hover highlight in the picture
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"dashboard screenshot: {shot}")
        assert shot.stat().st_size > 10_000
    finally:
        http_json("POST", cluster.master_url + "/api/admin/balance/stop", {})

    # signing out forgets the key and every figure
    page.click("#sign-out")
    page.locator("#signin").wait_for(state="visible", timeout=WAIT_MS)
    assert page.locator("#main").is_hidden() and page.locator("#who").is_hidden()
    assert page.locator("#nodes-body tr").count() == 0 and page.locator("#files-body tr").count() == 0
    assert browser.stored()["session"] == {}
    assert browser.problems == []


@needs_chromium
def test_sign_in_refusals(cluster: Cluster, browser: Browser) -> None:
    """A wrong key keeps the panel with the master's reason; an rw key browses files but is told that
    the cluster's status needs an admin key; a key revoked meanwhile sends the page back to the panel."""
    assert cluster.gateway is not None
    put(fs_url(cluster.gateway.url, "for-everyone.txt"), b"hi\n")
    page = browser.page
    admin_calls: list[str] = []
    page.on("request", lambda r: "/api/admin/" in r.url and admin_calls.append(r.url))
    page.goto(cluster.master_url + "/dashboard/")

    browser.sign_in("dfs_0123456789abcdef_" + "x" * 43)
    page.locator("#signin-error").wait_for(state="visible", timeout=WAIT_MS)
    assert "refused this key (EKEYREJECTED" in page.inner_text("#signin-error")
    assert page.locator("#signin").is_visible() and page.locator("#main").is_hidden()
    assert browser.stored()["session"] == {}
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-signin.png"))

    browser.sign_in("not a key")  # refused by the page itself: nothing is sent
    page.wait_for_function("() => document.getElementById('signin-error').textContent.includes('not an access key')",
                           timeout=WAIT_MS)
    assert page.locator("#main").is_hidden()

    rw = cluster.create_key("dash-rw", 1000, 1000, "rw")
    browser.sign_in(rw)
    page.locator("#files-body tr[data-name='for-everyone.txt']").wait_for(timeout=WAIT_MS)
    denied = page.inner_text("#cluster-denied")
    assert "may not read the cluster status: an admin key is needed" in denied, denied
    assert page.inner_text("#who-name") == "dash-rw (rw)"
    for section in ("#summary", "#health", "#nodes", "#activity", "#health-badge", "#error-banner"):
        assert page.locator(section).is_hidden(), section
    assert page.locator("#files-body tr[data-name='for-everyone.txt'] a.download").count() == 1
    assert admin_calls == []  # the page knew the key's scope: no call it would be refused
    page.screenshot(path=str(ARTIFACTS / "dashboard-rw.png"))

    status, _ = http_json("POST", cluster.master_url + "/api/admin/keys/revoke", {"name": "dash-rw"})
    assert status == 200
    page.reload()
    page.locator("#signin-error").wait_for(state="visible", timeout=WAIT_MS)
    assert "EKEYREVOKED" in page.inner_text("#signin-error")
    assert page.locator("#main").is_hidden() and browser.stored()["session"] == {}
    # the only complaints are Chromium's notes of the two refused sign-ins
    assert browser.problems and all("status of 401" in p for p in browser.problems), browser.problems


@needs_chromium
def test_without_gateway_the_browser_still_browses(bare_master: Cluster, browser: Browser) -> None:
    status, _ = http_json("POST", bare_master.master_url + "/api/create",
                          {"parent": 1, "name": "empty.txt", "mode": 0o100644})
    assert status == 200
    page = browser.page
    page.goto(bare_master.master_url + "/dashboard/#/")
    assert bare_master.admin_key
    browser.sign_in(bare_master.admin_key)
    page.locator("#files-body tr[data-name='empty.txt']").wait_for(timeout=WAIT_MS)
    assert page.locator("#gateway-note").is_visible()
    assert "need an HTTP gateway" in page.inner_text("#gateway-note")
    assert page.locator("#files-body a.download").count() == 0
    page.locator("#nodes-empty").wait_for(state="visible", timeout=WAIT_MS)
    assert page.inner_text("#sum-nodes") == "0 / 0 live"
    assert browser.problems == []
