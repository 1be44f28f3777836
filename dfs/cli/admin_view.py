"""How `dfs admin` shows the master's answers: rich tables and one-line summaries (no I/O but printing)."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from dfs.units import format_size

#: Wide when piped, so that tables are not cut to 80 columns in logs and scripts.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def size(n: int | float | None) -> str:
    return "-" if n is None else format_size(n)


def percent(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}%"


def rate(n: float | None) -> str:
    return "-" if not n else f"{format_size(n)}/s"


def server_name(nodes: dict[int, dict[str, Any]], sid: int | None) -> str:
    if sid is None:
        return "-"
    node = nodes.get(sid)
    return f"{sid} ({node['url'].split('://', 1)[-1]})" if node else str(sid)


# -- status, nodes, df ------------------------------------------------------------------------------------

def show_status(s: dict[str, Any]) -> None:
    n, cap, ch = s["nodes"], s["capacity"], s["chunks"]
    verdict = "[green]HEALTHY[/green]" if s["healthy"] else "[red]DEGRADED[/red]"
    used_pct = 100.0 * cap["used"] / cap["total"] if cap["total"] else None
    out.print(f"Cluster:   {verdict}")
    out.print(f"Nodes:     {n['total']} known: {n['live']} live, {n['dead']} dead, {n.get('unknown', 0)} unknown, "
              f"{n['draining']} draining, {n['decommissioned']} decommissioned")
    out.print(f"Capacity:  {size(cap['total'])}, used {size(cap['used'])} ({percent(used_pct)}), "
              f"free {size(cap['free'])}")
    out.print(f"Chunks:    {ch['total']}: {ch['healthy']} healthy, {ch['under_replicated']} under-replicated, "
              f"{ch['missing']} missing, {ch['corrupt']} corrupt ({ch['over_replicated']} over-replicated)")
    out.print(f"Files:     {s['files']} ({size(s['bytes'])}), {s['leases']} write leases, "
              f"chunk size {size(s['chunk_size'])}, default goal {s['goal']}")
    kept = s.get("resident") or {}
    if kept.get("files"):
        out.print(f"Resident:  {kept['files']} small files ({size(kept['bytes'])}) kept by the master "
                  f"(up to {size(kept['max'])} each)")
    bal = s.get("balance") or {}
    if bal.get("state") and bal["state"] != "idle":
        out.print(f"Balance:   {bal['state']}: {bal.get('moves_done', 0)} moves, {size(bal.get('bytes_moved'))}"
                  f" ({bal.get('message')})")
    for d in s.get("decommissions") or []:
        out.print(f"Node {d['server_id']} ({d['url']}): {d['state']}, {d['replicas_left']} replicas left")


def _age(node: dict[str, Any]) -> str:
    if node.get("heartbeat_age") is not None:
        return f"{node['heartbeat_age']:.1f} s ago"
    if node.get("last_heartbeat"):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(node["last_heartbeat"]))
    return "never"


STATE_STYLE = {"live": "green", "dead": "red", "unknown": "yellow", "draining": "yellow", "decommissioned": "dim"}


def show_nodes(nodes: list[dict[str, Any]]) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in [("ID", "right"), ("ADDRESS", "left"), ("STATE", "left"), ("CAPACITY", "right"),
                          ("USED", "right"), ("USE%", "right"), ("CHUNKS", "right"), ("LAST HEARTBEAT", "right")]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for n in nodes:
        style = STATE_STYLE.get(n["state"], "")
        table.add_row(str(n["id"]), n["url"].split("://", 1)[-1], f"[{style}]{n['state']}[/{style}]" if style
                      else n["state"], size(n["capacity"]), size(n["used"]), percent(n["utilisation"]),
                      str(n["chunks"]), _age(n))
    out.print(table)


def show_df(d: dict[str, Any]) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("NODE", "SIZE", "USED", "AVAIL", "USE%", "STATE"):
        table.add_column(name, justify="left" if name in ("NODE", "STATE") else "right")
    for n in d["nodes"]:
        table.add_row(n["url"].split("://", 1)[-1], size(n["capacity"]), size(n["used"]), size(n["free"]),
                      percent(n["utilisation"]), n["state"])
    table.add_row("[bold]total[/bold]", size(d["size"]), size(d["used"]), size(d["free"]), percent(d["use_percent"]),
                  "in service")
    out.print(table)
    stored = d["used"] / d["data"] if d["data"] else None
    out.print(f"File data: {size(d['data'])}" + (f", stored {stored:.2f}x with its replicas" if stored else ""))


# -- balance ----------------------------------------------------------------------------------------------

def spread_line(spread: dict[str, Any] | None) -> str:
    if not spread:
        return "-"
    return (f"{spread['min']:.1f}%..{spread['max']:.1f}% (mean {spread['mean']:.1f}%, "
            f"max deviation {spread['deviation']:.1f} points)")


def show_plan(plan: dict[str, Any], nodes: dict[int, dict[str, Any]]) -> None:
    moves = plan["moves"]
    out.print(f"Utilisation now: {spread_line(plan['spread'])}; threshold {plan['threshold']:g} points")
    if not moves:
        verdict = "balanced" if plan["balanced"] else "no move can narrow the spread"
        out.print(f"Nothing to move: {verdict}.")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("CHUNK", "FILE SLOT", "SIZE", "FROM", "TO", "WHY"):
        table.add_column(name, justify="right" if name in ("CHUNK", "SIZE") else "left")
    for m in moves:
        table.add_row(str(m["chunk_id"]), f"inode {m['inode']} #{m['index']}", size(m["length"]),
                      server_name(nodes, m["source"]), server_name(nodes, m["target"]), m["reason"])
    out.print(table)
    out.print(f"{len(moves)} moves, {size(plan['bytes'])} (dry run: nothing was changed)")


def balance_summary(st: dict[str, Any]) -> str:
    elapsed = st.get("elapsed") or 0.0
    speed = st["bytes_moved"] / elapsed if elapsed else 0.0
    lines = [
        f"balance {st['state']}: {st.get('message', '')}",
        f"  moved {st['moves_done']} replicas, {size(st['bytes_moved'])} in {elapsed:.1f} s ({rate(speed)})"
        + (f"; {st['moves_failed']} failed" if st.get("moves_failed") else "")
        + (f"; {st['moves_skipped']} skipped" if st.get("moves_skipped") else ""),
        f"  spread before: {spread_line(st.get('spread_before'))}",
        f"  spread after:  {spread_line(st.get('spread_after'))}",
    ]
    return "\n".join(lines)


# -- fsck, info -------------------------------------------------------------------------------------------

def show_fsck(r: dict[str, Any]) -> None:
    problems = r["problems"]
    if problems:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for name in ("PROBLEM", "FILE", "SLOT", "CHUNK", "SERVER", "DETAIL") + (("REPAIR",) if r["repair"] else ()):
            table.add_column(name)
        for p in problems:
            row = [p["kind"], p.get("path", "-"), str(p.get("index", "-")), str(p.get("chunk_id", "-")),
                   str(p.get("server_id", "-")), p["detail"]]
            if r["repair"]:
                done = p.get("repaired")
                mark = "[green]fixed[/green]" if done else ("[red]not fixed[/red]" if done is False else "-")
                row.append(f"{mark} {p.get('note', '')}".strip())
            table.add_row(*row)
        out.print(table)
    verdict = "healthy" if r["healthy"] else f"{r['unresolved']} problems" + (" left" if r["repair"] else "")
    out.print(f"fsck {r['path']}: {r['files']} files, {r['chunks']} chunks, {r['verified_replicas']} replicas "
              f"read and verified on {r['servers_checked']} servers in {r['seconds']:.1f} s: {verdict}"
              + (f" ({r['skipped_busy']} chunks being written were skipped)" if r["skipped_busy"] else ""))


def show_info(i: dict[str, Any]) -> None:
    out.print(f"{i['path']}:")
    out.print(f"  inode {i['inode']}, {i['size']} bytes, goal {i['goal']}, {len(i['chunks'])} chunks "
              f"of at most {size(i['chunk_size'])}")
    if i.get("resident") is not None:
        out.print(f"  resident: its first {i['resident']} bytes are kept by the master (they stand for chunk 0)")
    for c in i["chunks"]:
        out.print(f"  chunk {c['index']}: id {c['chunk_id']}, version {c['version']}, {c['length']} bytes, "
                  f"{c['copies']} good copies of goal {c['goal']}")
        if not c["replicas"]:
            out.print("    no replicas")
        for n, r in enumerate(c["replicas"], 1):
            mark = "ok" if r["status"] == "ok" else f"[red]{r['status']}[/red]"
            where = (r["url"] or "?").split("://", 1)[-1]
            out.print(f"    copy {n}: server {r['server_id']} {where} ({r['server_state']}) v{r['version']} "
                      f"{r['length'] if r['length'] is not None else '?'} bytes digest {r['digest'] or '-'}: {mark}")
