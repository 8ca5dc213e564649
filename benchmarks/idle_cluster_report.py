"""The Markdown report of benchmarks/idle_cluster.py: ``render(meta, result)``."""

from __future__ import annotations

import statistics
from typing import Any, Optional

from run import MiB, fmt


def _percentile(values: list[float], q: float) -> Optional[float]:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def _pooled_echo(generators: list[dict]) -> dict[str, Any]:
    """The sample echoes of every generator together."""
    rtts = [x for g in generators for x in g["result"].get("echo_rtts_ms") or []]
    total = {k: sum(g["result"].get(k) or 0 for g in generators) for k in ("echo_sample", "echo_sent", "echo_answered", "echo_skipped")}
    return {**total, "p50": statistics.median(rtts) if rtts else None, "p99": _percentile(rtts, 0.99), "max": max(rtts, default=None)}


def _codes(generators: list[dict]) -> dict[str, int]:
    codes: dict[str, int] = {}
    for g in generators:
        for code, n in (g["closed"].get("close_codes") or {}).items():
            codes[code] = codes.get(code, 0) + n
    return codes


def _names(sources: list) -> list[str]:
    """Each generator's source addresses (a list, or one string), as one name: ``127.0.0.2+127.0.0.3``."""
    return [source if isinstance(source, str) else "+".join(source) for source in sources]


def render(meta: dict, result: dict) -> str:
    o, m, v, k = meta["options"], meta["machine"], meta["versions"], meta["sysctl"]
    gens = result["generators"]
    pids = result["worker_pids"]
    before, held_at, end = result["before"], result["held_status"], result.get("end_status", {})
    held = sum(g["result"]["open"] for g in gens)
    conns = {pid: end[pid]["fds"] - before[pid]["fds"] for pid in pids if pid in end}
    rss_added = sum(end[pid]["rss"] - before[pid]["rss"] for pid in conns)
    echo = _pooled_echo(gens)
    codes = _codes(gens)
    low, high = (int(x) for x in k["net.ipv4.ip_local_port_range"])
    pid_max = int(k["kernel.pid_max"][0])
    exits = result.get("worker_exit_seconds", {})
    lines = [
        f"# {held:,} idle connections on one host: {o['workers']} worker processes, {o['generators']} load generators — {meta['date']}", "",
        f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}; shared with other engineers' work (see 'Machine during the run')",
        f"- Python {v['python']}, ws_multipath {v['ws_multipath']} ({meta['library']['ws_multipath source']}; masking: {v.get('ws_multipath speedups', '?')}); "
        f"generators: Node {v['node']} + ws {v['ws (node)']} (bufferutil: {v['bufferutil']})",
        f"- command: `{meta['command']}`; one run, {meta['elapsed_s']} s in all",
        f"- kernel: `kernel.pid_max` {pid_max:,}, `kernel.threads-max` {int(k['kernel.threads-max'][0]):,}, "
        f"`net.ipv4.ip_local_port_range` {low}-{high} ({high - low + 1:,} ports per source and destination address pair), "
        f"`fs.nr_open` {int(k['fs.nr_open'][0]):,}, `net.core.somaxconn` {k['net.core.somaxconn'][0]}",
        f"- server: `python -m ws_multipath serve servers:cluster_echo --workers {o['workers']} --host 127.0.0.1 --grace {o['grace']:g}` "
        f"(benchmarks/servers.py's echo on `/`, `SO_REUSEPORT`), RLIMIT_NOFILE of the workers: "
        + ", ".join(f"{n:,}" if n else "?" for n in result["worker_nofile"].values())
        + ("" if all(n == o["server_nofile"] for n in result["worker_nofile"].values()) else
           f" (asked for {o['server_nofile']:,}: the hard limit here is {meta['nofile_here'][1]:,}, and raising it needs CAP_SYS_RESOURCE, "
           f"which this {'process has' if meta.get('cap_sys_resource') else 'container does not give, even to root'})"),
        f"- generators: benchmarks/load.js in idle mode, {o['concurrency']} handshakes in flight each, soft RLIMIT_NOFILE 20,000 each, "
        f"bound to {', '.join(_names(result['sources']))} (one generator each), all to 127.0.0.1:{result['port']}",
        f"- heartbeat every {o['ping']:g} s; all held together for {o['hold']:g} s; sample echoes: {o['echo_sample']} connections per generator, "
        f"a 32 B message each every {o['echo_every']:g} s, one in flight",
        "", "## Result", "", "| | |", "|---|---:|",
        f"| connections held at the end of the hold (target {o['connections']:,}) | **{held:,}** |",
        f"| against `kernel.pid_max` | {held:,} {'>' if held > pid_max else '<='} {pid_max:,}; "
        f"the whole machine ran {result.get('machine_threads_at_hold', '?'):,} threads |",
        f"| seconds to open them (slowest generator) | {fmt(max(g['held']['connect_seconds'] for g in gens))} |",
        f"| connections dropped during the hold | {sum(g['result']['closed_during_hold'] for g in gens):,} |",
        f"| pings seen by the clients during the hold | {sum(g['result']['pings_during_hold'] for g in gens):,} |",
        f"| sample echoes answered / sent | {echo['echo_answered']:,} / {echo['echo_sent']:,} ({echo['echo_skipped']} rounds skipped while one was unanswered) |",
        f"| echo round trip p50 / p99 / max (ms) | {fmt(echo['p50'], 2)} / {fmt(echo['p99'], 2)} / {fmt(echo['max'], 1)} |",
        f"| server RSS per connection, all workers (KiB) | {fmt(rss_added / sum(conns.values()) / 1024 if conns and sum(conns.values()) else None)} |",
        f"| threads per worker process at the end of the hold | {', '.join(str(end[p]['threads']) for p in pids if p in end)} |",
        f"| seconds from SIGTERM until each worker had exited | {', '.join(fmt(exits.get(p), 2) for p in pids)} |",
        f"| seconds until the supervisor had exited | {fmt(result.get('supervisor_exit_seconds'), 2)} (exit code {result.get('supervisor_exit_code', '?')}) |",
        f"| clients closed with 1001 / otherwise / still open | {codes.get('1001', 0):,} / {sum(n for c, n in codes.items() if c != '1001'):,} / "
        f"{sum(g['closed'].get('still_open') or 0 for g in gens):,} |",
        "", "## Per worker", "",
        "| worker pid | connections | RSS before / held / end of hold (MiB) | RSS per connection (KiB) | threads before / held / end | server cores while holding | exited after SIGTERM (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for pid in pids:
        if pid not in end:
            lines.append(f"| {pid} | (exited during the test) | | | | | |")
            continue
        b, h, e, n = before[pid], held_at[pid], end[pid], conns[pid]
        lines.append(f"| {pid} | {n:,} | {b['rss'] / MiB:.0f} / {h['rss'] / MiB:.0f} / {e['rss'] / MiB:.0f} | "
                     f"{fmt((e['rss'] - b['rss']) / n / 1024 if n else None)} | {b['threads']} / {h['threads']} / {e['threads']} | "
                     f"{fmt(result['hold_cores'].get(pid), 3)} | {fmt(exits.get(pid), 2)} |")
    lines += ["", "## Per generator", "",
              "| source address | target | open at the end of the hold | failed | seconds to open | RSS (MiB) / fds once held | pings | dropped | echoes answered / sent | p50 / max (ms) | close codes | still open | closes spread over (s) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for source, g, st in zip(_names(result["sources"]), gens, result.get("generator_status") or [{}] * len(gens)):
        r, c = g["result"], g["closed"]
        lines.append(f"| {source} | {g['held']['open'] + g['held']['failed']:,} | {r['open']:,} | {g['held']['failed']} | {fmt(g['held']['connect_seconds'])} | "
                     f"{fmt(st['rss'] / MiB if st else None, 0)} / {st.get('fds', '-'):,} | "
                     f"{r['pings_during_hold']:,} | {r['closed_during_hold']} | {r['echo_answered']} / {r['echo_sent']} | "
                     f"{fmt(r['echo_rtt_p50_ms'], 2)} / {fmt(r['echo_rtt_max_ms'], 1)} | {c.get('close_codes')} | {c.get('still_open')} | "
                     f"{fmt(c.get('close_spread_seconds'), 2)} |")
    lines.append(f"\nStopped opening because: {result.get('guard') or '; '.join(sorted(set(g['held']['stop_reason'] for g in gens)))}. "
                 f"Server side, established connections by client address (`ss`): {result.get('by_source')}.")
    lines += ["", "## Machine during the run", "",
              f"Cores busy of the {m['nproc']} (/proc/stat), of which the servers' and generators' own CPU time, and the rest: "
              "other processes and the kernel's softirq work. Busy just before the run: "
              f"{fmt(result.get('background_busy_pct'), 0)}%.", "",
              "| phase | seconds | machine busy (cores) | servers + generators (cores) | others (cores) | load average (1 min): mean / max | machine threads (max) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for p in result.get("phases", []):
        lines.append(f"| {p['phase']} | {fmt(p['seconds'])} | {fmt(p['busy_cores'], 2)} | {fmt(p['our_cores'], 2)} | {fmt(p['other_cores'], 2)} | "
                     f"{fmt(p['loadavg_mean'], 1)} / {fmt(p['loadavg_max'], 1)} | {p['machine_threads_max'] or '-'} |")
    lines.append("\n(connect: until every generator held its share; settle: 1 s, then `ss` and the `go`; hold; close: from SIGTERM until "
                 "the supervisor exited; the close's own-CPU column is empty: the workers are gone by then.)")
    notes = result.get("server_log_notes") or []
    lines += ["", "Server log: " + ("; ".join(notes) if notes else "no worker killed, restarted or left with open connections."), ""]
    return "\n".join(lines)
