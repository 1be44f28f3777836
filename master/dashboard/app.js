// The dfs dashboard: polls this master's JSON API (same origin) and renders the cluster.
//
// Names and other strings that come from users (file names, node URLs, messages) reach the page
// only as text nodes (el(), textContent) or as properties of links built with encodeURIComponent:
// never through innerHTML. No external URL anywhere: the page works offline.
"use strict";

const REFRESH_MS = 3000;
// The next refresh waits at least this many times as long as the last one took, so that a master
// whose status is slow to compute (millions of chunks) spends at most a fifth of its time on a page.
const BACKOFF = 5;
const PAGE_SIZE = 500;
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

const $ = (id) => document.getElementById(id);

// The access key lives in this tab's sessionStorage only (never localStorage, a cookie or a URL): it
// is gone when the tab closes, and api() sends it to this master alone, as `Authorization: Bearer`.
const KEY_ITEM = "dfs.dashboard.key";
// Keys read dfs_<id>_<secret>; anything outside printable ASCII could not even go into a header.
const KEY_SHAPE = /^[\x21-\x7e]{1,512}$/;
// `session` counts sign-ins and sign-outs: an answer to a call of an earlier one is dropped.
const auth = { key: sessionStorage.getItem(KEY_ITEM), signedIn: false, session: 0, admin: false };

// -- helpers ---------------------------------------------------------------------------------------

/** A new element; string children become text nodes, props are set as properties. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "onclick") node.addEventListener("click", value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** An answer other than 2xx; `status` 0 for a call made before the last sign-out (its answer is dropped). */
class ApiError extends Error {
  constructor(message, status, reason) {
    super(message);
    this.status = status;
    this.reason = reason;
  }
}

/** A JSON call to this master with the access key (`Authorization: Bearer`): GET, or POST with `body`. */
async function api(path, body, key = auth.key) {
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  const init = { cache: "no-store", headers };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const session = auth.session;
  const resp = await fetch(path, init);
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = null;
  }
  if (session !== auth.session) throw new ApiError(`${path}: signed out meanwhile`, 0, "signed out");
  if (!resp.ok) {
    const why = data && data.message ? `${data.error}: ${data.message}` : `HTTP ${resp.status}`;
    if (resp.status === 401 && auth.signedIn && key === auth.key) {
      signOut(`The master no longer accepts this key (${why}). Sign in again.`);
    }
    throw new ApiError(`${path}: ${why}`, resp.status, why);
  }
  return data;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
  let value = n;
  let i = 0;
  while (Math.abs(value) >= 1024 && i < units.length - 1) {
    value /= 1024;
    i += 1;
  }
  return i === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : value < 100 ? 1 : 0)} ${units[i]}`;
}

const count = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const percent = (x, digits = 1) => (x === null || x === undefined ? "–" : `${Number(x).toFixed(digits)}%`);
const pad = (n) => String(n).padStart(2, "0");

function dateTime(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function shortDuration(seconds) {
  const s = Math.round(seconds);
  return s < 60 ? `${s}s` : s < 3600 ? `${Math.floor(s / 60)}m${pad(s % 60)}s` : `${Math.floor(s / 3600)}h${pad(Math.floor((s % 3600) / 60))}m`;
}

function setText(id, text) {
  $(id).textContent = text;
}

function setBar(fill, fraction) {
  const f = Number.isFinite(fraction) ? Math.max(0, Math.min(1, fraction)) : 0;
  fill.style.width = `${(f * 100).toFixed(2)}%`;
  fill.classList.toggle("warn", f >= 0.8 && f < 0.95);
  fill.classList.toggle("full", f >= 0.95);
}

function bar(fraction) {
  const fill = el("div", { class: "fill" });
  setBar(fill, fraction);
  return el("div", { class: "bar" }, fill);
}

function badge(state) {
  return el("span", { class: `badge state-${String(state).replace(/[^a-z_-]/gi, "")}` }, state);
}

/** Label: value pairs as a line of small figures. */
function figures(pairs) {
  const out = [];
  for (const [label, value] of pairs) {
    if (value === null || value === undefined || value === "") continue;
    out.push(el("span", { class: "figure" }, el("span", { class: "muted" }, `${label} `), value));
  }
  return out;
}

// -- cluster state ---------------------------------------------------------------------------------

function renderSummary(st) {
  const n = st.nodes;
  setText("sum-nodes", `${n.live} / ${n.total} live`);
  const other = Object.entries(n).filter(([k, v]) => k !== "total" && k !== "live" && v).map(([k, v]) => `${v} ${k}`);
  setText("sum-nodes-sub", other.length ? other.join(" · ") : "all in service");

  const cap = st.capacity;
  setText("sum-capacity", `${bytes(cap.used)} / ${bytes(cap.total)}`);
  setBar($("sum-capacity-bar"), cap.total ? cap.used / cap.total : 0);
  setText("sum-capacity-sub", `${percent(cap.total ? (100 * cap.used) / cap.total : null)} used · ${bytes(cap.free)} free`);

  setText("sum-files", count(st.files));
  setText("sum-files-sub", `${bytes(st.bytes)} of file data · ${count(st.leases)} open for writing`);

  setText("sum-chunks", count(st.chunks.total));
  setText("sum-chunks-sub", `goal ${st.goal} · chunk size ${bytes(st.chunk_size)}`);

  const hb = $("health-badge");
  hb.textContent = st.healthy ? "healthy" : "needs attention";
  hb.className = `badge ${st.healthy ? "state-live" : "state-dead"}`;
}

const HEALTH_KINDS = [
  ["healthy", "Healthy", "ok"],
  ["under_replicated", "Under-replicated", "warn"],
  ["missing", "Missing", "bad"],
  ["corrupt", "Corrupt", "corrupt"],
];

function renderHealth(chunks, repair) {
  const stack = $("health-bar");
  const legend = $("health-legend");
  const parts = [];
  const items = [];
  for (const [key, label, kind] of HEALTH_KINDS) {
    const value = chunks[key] || 0;
    if (value && chunks.total) {
      const part = el("div", { class: `part ${kind}`, title: `${label}: ${count(value)}` });
      part.style.flexGrow = String(value);
      parts.push(part);
    }
    items.push(el("li", { dataset: { kind: key } }, el("span", { class: `dot ${kind}` }),
      el("span", { class: "legend-label" }, label), el("strong", {}, count(value))));
  }
  if (!chunks.total) parts.push(el("div", { class: "part empty" }, "no chunks yet"));
  stack.replaceChildren(...parts);
  items.push(el("li", { dataset: { kind: "over_replicated" } }, el("span", { class: "dot over" }),
    el("span", { class: "legend-label" }, "Over goal (extra copies)"), el("strong", {}, count(chunks.over_replicated))));
  legend.replaceChildren(...items);

  if (!repair) return;
  const copies = repair.copies || {};
  $("repair").replaceChildren(el("span", { class: "subhead" }, "Re-replication:"), ...figures([
    ["copies in flight", count(copies.in_flight)],
    ["copied", `${count(copies.copies)} (${bytes(copies.bytes)})`],
    ["failed", copies.failed ? count(copies.failed) : null],
    ["rate", copies.rate ? `${bytes(copies.rate)}/s` : null],
    ["waiting for maintenance", repair.waiting_for_maintenance ? count(repair.waiting_for_maintenance) : null],
    ["goal unreachable", repair.goal_unreachable ? count(repair.goal_unreachable) : null],
    ["last scan", repair.last_scan ? `${duration(Date.now() / 1000 - repair.last_scan)} ago` : "not yet"],
  ]));
}

function renderNodes(nodes, servers) {
  const load = new Map((servers || []).map((s) => [s.id, s]));
  const rows = nodes.map((n) => {
    const util = n.utilisation;
    const live = load.get(n.id);
    const left = live && live.maintenance_left !== null && n.state === "maintenance"
      ? el("span", { class: "muted" }, ` ${shortDuration(live.maintenance_left)} left`) : null;
    return el("tr", { dataset: { nodeId: String(n.id), state: n.state } },
      el("td", { class: "num" }, String(n.id)),
      el("td", { class: "url", title: `uuid ${n.uuid}` }, n.url),
      el("td", {}, badge(n.state), left),
      el("td", { class: "util" }, el("div", { class: "util-cell" }, bar(util === null ? 0 : util / 100),
        el("span", { class: "util-text" }, percent(util)))),
      el("td", { class: "num" }, `${bytes(n.used)} / ${bytes(n.capacity)}`),
      el("td", { class: "num" }, count(n.chunks)),
      el("td", { class: "num" }, live ? count(live.load) : "–"),
      el("td", { class: "num" }, n.heartbeat_age === null ? "never" : `${n.heartbeat_age.toFixed(1)} s ago`));
  });
  $("nodes-body").replaceChildren(...rows);
  $("nodes-empty").hidden = rows.length > 0;
}

function renderBalance(b) {
  const box = $("balance");
  const running = b && (b.state === "running" || b.state === "stopping");
  box.hidden = !running;
  if (!running) return false;
  const progress = $("balance-progress");
  progress.max = Math.max(1, b.bytes_planned || 0);
  progress.value = Math.min(progress.max, b.bytes_moved || 0);
  const done = b.bytes_planned ? (100 * b.bytes_moved) / b.bytes_planned : 0;
  progress.title = `${percent(done)} of the planned bytes moved`;
  const state = $("balance-state");
  state.textContent = b.state;
  state.className = `badge state-${b.state}`;
  setText("balance-message", b.message || "");
  $("balance-figures").replaceChildren(...figures([
    ["moved", `${bytes(b.bytes_moved)} of ${bytes(b.bytes_planned)} (${percent(done)})`],
    ["moves", `${count(b.moves_done)} of ${count(b.moves_planned)}`],
    ["failed", b.moves_failed ? count(b.moves_failed) : null],
    ["in flight", count((b.in_flight || []).length)],
    ["rate", b.rate ? `${bytes(b.rate)}/s` : null],
    ["limit", b.max_bandwidth ? `${bytes(b.max_bandwidth)}/s` : null],
    ["ETA", b.eta !== null && b.eta !== undefined ? duration(b.eta) : null],
    ["elapsed", duration(b.elapsed)],
    ["threshold", b.threshold !== undefined ? `±${b.threshold} points of the mean` : null],
  ]));
  return true;
}

function renderDecommissions(drains) {
  const active = (drains || []).filter((d) => d.state === "draining");
  const boxes = active.map((d) => {
    const initial = d.initial_bytes || 0;
    const progress = el("progress", { class: "drain-progress", max: 1 });
    if (initial > 0) {
      progress.max = initial;
      progress.value = Math.max(0, Math.min(initial, initial - d.bytes_left));
    } else if (d.initial_replicas) {
      progress.max = d.initial_replicas;
      progress.value = Math.max(0, d.initial_replicas - d.replicas_left);
    } else {
      progress.removeAttribute("value"); // unknown total (master restarted): indeterminate
    }
    const done = progress.hasAttribute("value") ? (100 * progress.value) / progress.max : null;
    return el("div", { class: "job", dataset: { serverId: String(d.server_id) } },
      el("div", { class: "job-head" }, el("strong", {}, "Decommission "), el("span", { class: "url" }, d.url), " ",
        badge(d.state), " ", el("span", { class: "muted" }, d.message || "")),
      progress,
      el("div", { class: "figures" }, ...figures([
        ["left", `${count(d.replicas_left)} replicas (${bytes(d.bytes_left)})`],
        ["done", done === null ? null : percent(done)],
        ["moved", d.moved !== undefined ? `${count(d.moved)} (${bytes(d.moved_bytes)})` : null],
        ["failed", d.failed ? count(d.failed) : null],
        ["nowhere to go", d.stuck ? count(d.stuck) : null],
      ])));
  });
  $("decommissions").replaceChildren(...boxes);
  return boxes.length > 0;
}

let refreshing = false;
let timer = null;

const CLUSTER_SECTIONS = ["summary", "activity", "health", "nodes"];

/** The cluster's panels need an admin key; the file browser works with any key. */
function denyCluster(message) {
  auth.admin = false;
  clearTimeout(timer);
  for (const id of CLUSTER_SECTIONS) $(id).hidden = true;
  $("health-badge").hidden = true;
  const note = $("cluster-denied");
  note.textContent = message;
  note.hidden = false;
}

/** Fetch everything and render it, then schedule the next round (none while the tab is hidden). */
async function refresh() {
  if (refreshing || !auth.signedIn || !auth.admin) return;
  refreshing = true;
  clearTimeout(timer);
  const started = performance.now();
  try {
    const [st, nodes, balance, plain] = await Promise.all([
      api("../api/admin/status"), api("../api/admin/nodes"), api("../api/admin/balance"), api("../api/status"),
    ]);
    renderSummary(st);
    renderHealth(st.chunks, plain.repair);
    renderNodes(nodes.nodes, plain.servers);
    const jobs = [renderBalance(balance), renderDecommissions(st.decommissions)];
    $("activity").hidden = !jobs.some(Boolean);
    $("health-badge").hidden = false;
    $("error-banner").hidden = true;
    setText("updated", `updated ${dateTime(Date.now()).slice(11)}`);
  } catch (err) {
    if (err.status === 0 || err.status === 401) return; // signed out meanwhile, or just now
    if (err.status === 403) {
      denyCluster(`This key may not read the cluster status: an admin key is needed (${err.reason}).`);
      return;
    }
    const banner = $("error-banner");
    banner.textContent = `The master did not answer (${err.message}); retrying every ${REFRESH_MS / 1000} s.`;
    banner.hidden = false;
  } finally {
    refreshing = false;
    if (auth.signedIn && auth.admin && !document.hidden) {
      timer = setTimeout(refresh, Math.max(REFRESH_MS, BACKOFF * (performance.now() - started)));
    }
  }
}

// -- file browser ------------------------------------------------------------------------------------

let gatewayUrl = null;
let listing = { path: "/", inode: null, next: null, generation: 0 };

/** "/a/b c" <-> "#/a/b%20c": every name percent-encoded, so any character round-trips. */
function pathFromHash() {
  const raw = location.hash.replace(/^#/, "");
  try {
    const parts = raw.split("/").filter(Boolean).map(decodeURIComponent);
    return "/" + parts.join("/");
  } catch {
    return "/";
  }
}

const splitPath = (path) => path.split("/").filter(Boolean);
const hashOf = (parts) => "#/" + parts.map(encodeURIComponent).join("/");

function downloadUrl(parts) {
  return `${gatewayUrl}/fs/${parts.map(encodeURIComponent).join("/")}`;
}

function renderCrumbs(path) {
  const parts = splitPath(path);
  const crumbs = [el("a", { href: "#/", class: "crumb" }, "/")];
  parts.forEach((name, i) => {
    if (i > 0) crumbs.push(el("span", { class: "sep" }, "/"));
    crumbs.push(el("a", { href: hashOf(parts.slice(0, i + 1)), class: "crumb" }, name));
  });
  $("crumbs").replaceChildren(...crumbs);
}

function fileRow(folderParts, entry) {
  const attr = entry.attr;
  const kind = attr.mode & S_IFMT;
  const parts = [...folderParts, entry.name];
  let name;
  let link = "–";
  if (kind === S_IFDIR) {
    name = el("a", { href: hashOf(parts), class: "entry dir" }, el("span", { class: "icon" }, "▸"), entry.name, "/");
  } else {
    const label = kind === S_IFLNK ? " (symlink)" : kind === S_IFREG ? "" : " (special)";
    name = el("span", { class: "entry file" }, el("span", { class: "icon" }, "·"), entry.name,
      el("span", { class: "muted" }, label));
    if (kind === S_IFREG && gatewayUrl) {
      link = el("a", { href: downloadUrl(parts), class: "download", target: "_blank", rel: "noopener", download: entry.name },
        "download");
    }
  }
  return el("tr", { dataset: { name: entry.name } },
    el("td", { class: "name" }, name),
    el("td", { class: "num", title: `${count(attr.size)} bytes` }, kind === S_IFDIR ? "–" : bytes(attr.size)),
    el("td", {}, dateTime(attr.mtime_ns / 1e6)),
    el("td", { class: "num" }, kind === S_IFREG ? String(attr.goal) : "–"),
    el("td", {}, link));
}

async function loadMore() {
  const mine = listing;
  const page = await api("../api/readdir", { inode: mine.inode, after: mine.next, limit: PAGE_SIZE });
  if (mine !== listing) return; // another folder was opened meanwhile
  const parts = splitPath(listing.path);
  $("files-body").append(...page.entries.map((e) => fileRow(parts, e)));
  listing.next = page.next;
  $("more").hidden = page.next === null;
  $("files-empty").hidden = $("files-body").children.length > 0;
}

async function openFolder() {
  if (!auth.signedIn) return;
  const path = pathFromHash();
  renderCrumbs(path);
  $("files-body").replaceChildren();
  $("more").hidden = true;
  $("files-empty").hidden = true;
  const error = $("browser-error");
  error.hidden = true;
  const generation = listing.generation + 1;
  listing = { path, inode: null, next: null, generation };
  try {
    const { attr } = await api("../api/resolve", { path, follow: true });
    if (listing.generation !== generation) return; // another folder was opened meanwhile
    if ((attr.mode & S_IFMT) !== S_IFDIR) throw new Error(`${path} is not a folder`);
    listing = { path, inode: attr.inode, next: null, generation };
    await loadMore();
  } catch (err) {
    if (listing.generation !== generation || err.status === 0 || err.status === 401) return;
    error.textContent = `Cannot list ${path}: ${err.message}`;
    error.hidden = false;
  }
}

async function loadConfig() {
  let why = "Downloads need an HTTP gateway: start the master with --gateway-url URL of a running "
    + "`dfs gateway` (make run does). Browsing works without one.";
  try {
    gatewayUrl = (await api("../api/dashboard")).gateway_url;
  } catch (err) {
    gatewayUrl = null;
    if (err.status === 0) return;
    why = `No download links: the gateway's address is not known (${err.message}).`;
  }
  const note = $("gateway-note");
  note.hidden = Boolean(gatewayUrl);
  note.textContent = why;
  $("download-note").hidden = !gatewayUrl;
}

// -- signing in ------------------------------------------------------------------------------------------

// The page as served, before any data: signing out puts it back, so nothing of the last key stays.
let pristineMain = null;

/** No key (or a refused one): the sign-in panel, and nothing of the cluster. */
function showSignIn(message) {
  auth.signedIn = false;
  auth.admin = false;
  auth.session += 1;
  clearTimeout(timer);
  listing = { path: "/", inode: null, next: null, generation: listing.generation + 1 };
  $("main").replaceWith(pristineMain.cloneNode(true));
  $("footer").hidden = true;
  $("who").hidden = true;
  $("health-badge").hidden = true;
  $("error-banner").hidden = true;
  setText("updated", "");
  const error = $("signin-error");
  error.textContent = message || "";
  error.hidden = !message;
  $("signin").hidden = false;
  $("signin-button").disabled = false;
  $("signin-key").focus();
}

function signOut(message) {
  auth.key = null;
  sessionStorage.removeItem(KEY_ITEM);
  showSignIn(message);
}

/** Signed in (`who`: the answer of /api/whoami): the dashboard, with the cluster's panels for an admin key. */
function enter(who) {
  auth.signedIn = true;
  auth.session += 1;
  auth.admin = who.scope === "admin";
  $("signin").hidden = true;
  $("signin-error").hidden = true;
  $("main").hidden = false;
  $("footer").hidden = false;
  setText("who-name", who.key ? `${who.key.name} (${who.scope})` : "no key: the master is --insecure");
  $("sign-out").hidden = !who.key;
  $("who").hidden = false;
  if (!auth.admin) {
    denyCluster(`This key ("${who.key.name}", scope ${who.scope}) may not read the cluster status: an admin key `
      + "is needed. The file browser below works with it.");
  }
  loadConfig().then(openFolder);
  refresh();
}

/** Check `key` with /api/whoami; kept (sessionStorage) and used only when the master accepts it. */
async function signIn(key) {
  $("signin-button").disabled = true;
  let who;
  try {
    who = await api("../api/whoami", undefined, key);
  } catch (err) {
    const refused = err.status === 401 || err.status === 403;
    signOut(refused ? `The master refused this key (${err.reason}).` : `Cannot sign in: ${err.message}`);
    return;
  }
  auth.key = key;
  sessionStorage.setItem(KEY_ITEM, key);
  enter(who);
}

/** A master started with --insecure needs no key: its public /health says so. */
async function insecureMaster() {
  try {
    const resp = await fetch("../health", { cache: "no-store" });
    return resp.ok && (await resp.json()).insecure === true;
  } catch {
    return false;
  }
}

function onSignInSubmit(event) {
  event.preventDefault(); // nothing is ever posted (the CSP says form-action 'none')
  const input = $("signin-key");
  const key = input.value.trim();
  input.value = "";
  if (!KEY_SHAPE.test(key)) {
    showSignIn("That is not an access key: keys read dfs_<id>_<secret>, in printable ASCII without spaces.");
    return;
  }
  signIn(key);
}

// -- start ---------------------------------------------------------------------------------------------

async function start() {
  pristineMain = $("main").cloneNode(true);
  $("signin-form").addEventListener("submit", onSignInSubmit);
  $("sign-out").addEventListener("click", () => signOut(""));
  window.addEventListener("hashchange", openFolder);
  // the buttons inside <main> are new elements after each sign-out: one listener for all of them
  document.addEventListener("click", (event) => {
    if (!auth.signedIn || !(event.target instanceof Element)) return;
    if (event.target.closest("#reload")) openFolder();
    if (event.target.closest("#more")) {
      loadMore().catch((err) => {
        if (err.status === 0) return;
        $("browser-error").textContent = err.message;
        $("browser-error").hidden = false;
      });
    }
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refresh();
  });
  if (auth.key) await signIn(auth.key);
  else if (await insecureMaster()) enter({ key: null, scope: "admin" });
  else showSignIn("");
}

start();
