#!/usr/bin/python3
"""Summaries of tools/bench raw results: medians and spread (min-max) per case, as Markdown.

  summarize.py delivery FILE.tsv    (tools/bench/delivery.sh)
  summarize.py auth FILE.tsv        (tools/bench/auth.sh)
  summarize.py heartbeat FILE.tsv   (tools/bench/heartbeat.sh)
  summarize.py raw FILE.tsv         every row, as a Markdown table
"""
import csv
import statistics
import sys
from collections import defaultdict


def rows(path):
    with open(path) as f:
        return [r for r in csv.DictReader(f, delimiter="\t")]


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def spread(vals, fmt="{:.0f}"):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "n/a"
    return (fmt + " ({}–{})").format(statistics.median(vals), fmt.format(min(vals)), fmt.format(max(vals)))


def delivery(path):
    groups = defaultdict(list)
    for r in rows(path):
        groups[(int(r["bytes"]), int(r["window"]), r["system"])].append(r)
    names = {"ours": "argocd-agent (principal→agent), HTTP/2",
             "ours-ws": "argocd-agent (principal→agent), WebSocket",
             "ours-gz": "argocd-agent (principal→agent), HTTP/2 + gzip",
             "echo": "bare grpc++ async echo"}
    order = {"ours": 0, "ours-ws": 1, "ours-gz": 2, "echo": 3}
    print("| bytes | window | system | events/s median (min–max) | p50 µs | p99 µs | CPU µs/event server / client | load1 | runs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (b, w, s) in sorted(groups, key=lambda k: (k[0], k[1], order.get(k[2], 9))):
        rs = groups[(b, w, s)]
        ok = [r for r in rs if r["ms"] != "FAILED"]
        side = lambda key: [num(r[key]) * 1000.0 / num(r["count"]) for r in ok
                            if num(r[key]) is not None]
        print("| {} | {} | {} | {} | {} | {} | {} / {} | {} | {}{} |".format(
            b, w, names.get(s, s), spread([num(r["rate"]) for r in ok]),
            spread([num(r["p50_us"]) for r in ok]), spread([num(r["p99_us"]) for r in ok]),
            spread(side("server_cpu_ms"), "{:.1f}"), spread(side("client_cpu_ms"), "{:.1f}"),
            "/".join(r["load1"] for r in rs), len(ok), "" if len(ok) == len(rs) else " ({} failed)".format(len(rs) - len(ok))))
    keys = sorted({(b, w) for (b, w, s) in groups})
    for (a, base, title) in [("ours", "echo", "ours/bare"), ("ours-ws", "ours", "WebSocket/HTTP/2"),
                             ("ours-gz", "ours", "gzip/plain")]:
        if not any(s == a for (_, _, s) in groups) or not any(s == base for (_, _, s) in groups):
            continue
        print()
        print("| bytes | window | {} rate (median of per-rep ratios, min–max) | {} CPU per event |".format(title, title))
        print("|---|---|---|---|")
        for (b, w) in keys:
            x = {r["rep"]: r for r in groups.get((b, w, a), []) if r["ms"] != "FAILED"}
            y = {r["rep"]: r for r in groups.get((b, w, base), []) if r["ms"] != "FAILED"}
            rr, cr = [], []
            for rep in x:
                if rep in y:
                    rr.append(100.0 * num(x[rep]["rate"]) / num(y[rep]["rate"]))
                    cx = (num(x[rep]["server_cpu_ms"]) + num(x[rep]["client_cpu_ms"])) / num(x[rep]["count"])
                    cy = (num(y[rep]["server_cpu_ms"]) + num(y[rep]["client_cpu_ms"])) / num(y[rep]["count"])
                    cr.append(cx / cy)
            print("| {} | {} | {} | {} |".format(b, w, spread(rr, "{:.0f} %"), spread(cr, "{:.2f}×")))


def wire_bytes(path):
    """Loopback bytes per event (lo_bytes / count), per system: what compression saves."""
    groups = defaultdict(list)
    for r in rows(path):
        if r.get("lo_bytes") and r["ms"] != "FAILED":
            groups[(int(r["bytes"]), int(r["window"]), r["system"])].append(
                num(r["lo_bytes"]) / num(r["count"]))
    if not groups:
        return
    print()
    print("| bytes | window | system | loopback bytes per event, median (min–max) |")
    print("|---|---|---|---|")
    for k in sorted(groups):
        print("| {} | {} | {} | {} |".format(k[0], k[1], k[2], spread(groups[k], "{:.0f}")))


def auth(path):
    groups = defaultdict(list)
    order = []
    for r in rows(path):
        k = r["case"]
        if k not in groups:
            order.append(k)
        groups[k].append(r)
    print("| case | calls/s median (min–max) | p50 µs | p99 µs | auth worker CPU µs/call | listener CPU µs/call | load1 | runs |")
    print("|---|---|---|---|---|---|---|---|")
    for k in order:
        rs = groups[k]
        print("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
            k, spread([num(r["rate"]) for r in rs]), spread([num(r["p50_us"]) for r in rs], "{:.0f}"),
            spread([num(r["p99_us"]) for r in rs], "{:.0f}"),
            spread([num(r["auth_cpu_us_per_call"]) for r in rs]) if rs[0]["auth_cpu_us_per_call"] else "–",
            spread([num(r["listener_cpu_us_per_call"]) for r in rs]) if rs[0]["listener_cpu_us_per_call"] else "–",
            "/".join(r["load1"] for r in rs), len(rs)))

    def by(prefix):
        for k in order:
            if k.startswith(prefix):
                return {r["rep"]: r for r in groups[k]}
        return {}

    print()
    print("| comparison | p50 ratio (worker / in-process) | p50 added by the worker, minus the grpc floor: worker − in-process − Version | rate ratio |")
    print("|---|---|---|---|")
    for name, w, i, f in (("userpass, sequential", "(b) ", "(a) ", "(b0)"), ("header, sequential", "(c) ", "(d) ", "(c0)"),
                          ("userpass, 4 threads", "(b4)", "(a4)", "(b0)"), ("header, 4 threads", "(c4)", "(d4)", "(c0)")):
        W, I, F = by(w), by(i), by(f)
        ratio, added, rate = [], [], []
        for rep in W:
            if rep in I and rep in F:
                ratio.append(num(W[rep]["p50_us"]) / num(I[rep]["p50_us"]))
                added.append(num(W[rep]["p50_us"]) - num(I[rep]["p50_us"]) - num(F[rep]["p50_us"]))
                rate.append(num(W[rep]["rate"]) / num(I[rep]["rate"]))
        print("| {} | {} | {} | {} |".format(name, spread(ratio, "{:.2f}×"), spread(added, "{:.0f} µs"),
                                            spread(rate, "{:.2f}×")))


def heartbeat(path):
    groups = defaultdict(list)
    for r in rows(path):
        groups[r["heartbeats"]].append(r)
    print("| heartbeats | listener CPU ms per window | CPU % of a core | RSS MiB at end | threads | heartbeats ACKed/s | RTT p50 µs | RTT p99 µs | load1 | runs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k in ("off", "on"):
        rs = groups.get(k, [])
        if not rs:
            continue
        print("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            k, spread([num(r["cpu_ms"]) for r in rs]), spread([num(r["cpu_pct"]) for r in rs], "{:.1f}"),
            spread([num(r["rss_end_kib"]) / 1024 for r in rs], "{:.1f}"), spread([num(r["threads"]) for r in rs]),
            spread([num(r["rate"]) for r in rs]), spread([num(r["rtt_p50_us"]) for r in rs]),
            spread([num(r["rtt_p99_us"]) for r in rs]), "/".join(r["load1"] for r in rs), len(rs)))
    on, off = groups.get("on", []), groups.get("off", [])
    if on and off:
        cpu_on = med([num(r["cpu_ms"]) / max(1.0, num(r["acked"])) * 1000.0 for r in on])
        idle_ms = med([num(r["cpu_ms"]) for r in off])
        on_ms = med([num(r["cpu_ms"]) for r in on])
        acked = med([num(r["acked"]) for r in on])
        rss_on = med([num(r["rss_end_kib"]) for r in on])
        rss_off = med([num(r["rss_end_kib"]) for r in off])
        print()
        print("- listener CPU per 1,000 heartbeats, total (on): {:.0f} ms".format(cpu_on))
        print("- listener CPU per 1,000 heartbeats, above idle (median on − median off): {:.0f} ms".format(
            (on_ms - idle_ms) / acked * 1000.0))
        print("- RSS with heartbeats on − off (medians): {:+.1f} MiB".format((rss_on - rss_off) / 1024))


def raw(path):
    with open(path) as f:
        lines = [l.rstrip("\n").split("\t") for l in f if l.strip()]
    print("| " + " | ".join(lines[0]) + " |")
    print("|" + "---|" * len(lines[0]))
    for l in lines[1:]:
        print("| " + " | ".join(l) + " |")


if __name__ == "__main__":
    {"delivery": lambda p: (delivery(p), wire_bytes(p)), "auth": auth, "heartbeat": heartbeat, "raw": raw}[sys.argv[1]](sys.argv[2])
