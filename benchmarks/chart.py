#!/usr/bin/env python3
"""Draw a results file of benchmarks/run.py as a PNG beside it:

    .venv/bin/python benchmarks/chart.py benchmarks/results/<name>.json   # -> <name>.png

Left: ws_multipath's throughput over each peer's, per scenario (paired
ratios; 1.0 = as fast). Right: server CPU per operation, log scale.
matplotlib is a benchmark-only dependency (run.py installs it into .venv).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"websockets": "#4c72b0", "node_ws": "#55a868", "raw_tcp": "#8c8c8c", "werkzeug": "#dd8452", "gunicorn": "#c44e52",
           "ws_multipath": "#8172b3", "ws_multipath+wsgi": "#937860"}
LABELS = {"websockets": "vs websockets 17", "node_ws": "vs Node ws", "raw_tcp": "vs raw TCP echo", "werkzeug": "vs Werkzeug",
          "gunicorn": "vs gunicorn", "ws_multipath": "vs without wsgi_app"}


def main(path: Path) -> Path:
    results = json.loads(path.read_text())
    entries = [e for e in results["summary"].values() if e.get("kind") == "throughput"]
    entries.reverse()  # first scenario at the top
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 0.42 * len(entries) + 3.0), sharey=True,
                                      gridspec_kw={"width_ratios": [3, 2]})
    titles = [e["title"].replace("`", "") for e in entries]
    ys = range(len(entries))
    peers = ["websockets", "node_ws", "raw_tcp", "werkzeug", "gunicorn", "ws_multipath"]
    height = 0.8 / 3
    seen: set = set()
    for y, e in zip(ys, entries):
        shown = [p for p in peers if p in e.get("ratios", {}) and e["ratios"][p].get("median")]
        for k, peer in enumerate(shown[:3]):
            value = e["ratios"][peer]["median"]
            offset = (k - (len(shown[:3]) - 1) / 2) * height
            left.barh(y + offset, value, height, color=COLOURS[peer], label=None if peer in seen else LABELS[peer])
            left.text(value, y + offset, f" {value:.2f}", va="center", fontsize=7)
            seen.add(peer)
        cpu_impls = [i for i in e["impls"] if e[i].get("server_cpu_per_op_us")]
        h = 0.8 / max(1, len(cpu_impls))
        for k, impl in enumerate(cpu_impls):
            value = e[impl]["server_cpu_per_op_us"]
            offset = (k - (len(cpu_impls) - 1) / 2) * h
            right.barh(y + offset, value, h, color=COLOURS.get(impl, "#333333"))
            right.text(value, y + offset, f" {value:,.0f}" if value >= 10 else f" {value:.1f}", va="center", fontsize=6)
    left.axvline(1.0, color="black", linewidth=0.8)
    left.set_yticks(list(ys), titles, fontsize=8)
    left.set_xlabel("ws_multipath throughput / peer's (same run, interleaved pairs)")
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, fontsize=8)
    right.set_xscale("log")
    right.set_xlabel("server CPU µs per op (log)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLOURS[i]) for i in ("ws_multipath", "websockets", "node_ws", "raw_tcp", "werkzeug", "gunicorn", "ws_multipath+wsgi")]
    right.legend(handles, ["ws_multipath", "websockets", "Node ws", "raw TCP", "Werkzeug", "gunicorn", "wm + wsgi_app"], loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4, fontsize=7)
    meta = results["meta"]
    q = meta.get("quiet") or {}
    fig.suptitle(f"ws_multipath benchmarks, {meta['date'][:10]}, {meta['machine']['nproc']} CPUs, {meta['reps']} interleaved pairs; "
                 f"machine busy before the runs {q.get('busy_before_median', 0):.0f}% (median), "
                 f"others used {q.get('other_cores_median', 0):.2f} cores during them", fontsize=9)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    print(f"chart written to {out}")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
