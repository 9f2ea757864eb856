"""The report's workers section: each data-parallel worker's medians, and the restarts of the worker group."""

from __future__ import annotations

import html
import statistics
from typing import Any


def _median(records: list[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else float("nan")


def workers_html(workers: list[dict[str, Any]], starts: list[dict[str, Any]]) -> str:
    """`workers`: the log's "worker" records; `starts`: its "start" / "restart" records. Empty without workers."""
    if not workers:
        return ""
    by_rank: dict[int, list[dict[str, Any]]] = {}
    for r in workers:
        by_rank.setdefault(int(r["worker"]), []).append(r)
    head = ("<tr><th>worker</th><th>steps</th><th>tokens/s</th><th>step s</th><th>reduction s</th>"
            "<th>reduction share</th><th>waiting for shards s</th></tr>")
    rows = []
    for rank in sorted(by_rank):
        records = by_rank[rank]
        step_s, reduce_s = _median(records, "step_time_s"), _median(records, "reduce_s")
        share = reduce_s / step_s if step_s > 0 else float("nan")
        rows.append(f"<tr><td>{rank}</td><td>{len(records):,}</td><td>{_median(records, 'tokens_per_s'):,.0f}</td>"
                    f"<td>{step_s:.3f}</td><td>{reduce_s:.3f}</td><td>{share:.1%}</td>"
                    f"<td>{_median(records, 'wait_s'):.3f}</td></tr>")
    restarts = [r for r in starts if r.get("event") == "restart"]
    note = "No restarts." if not restarts else "Restarts of the worker group: " + ", ".join(
        f"attempt {r.get('attempt')} from step {r.get('step')}" for r in restarts) + "."
    return (f"<h2>Workers</h2><p class=\"note\">Medians per step. {html.escape(note)}</p>"
            f"<table>{head}{''.join(rows)}</table>")
