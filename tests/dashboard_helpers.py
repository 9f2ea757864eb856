"""Reading the generated dashboards' queries as plain PromQL (for the dashboard tests and the real Prometheus)."""

from __future__ import annotations

from typing import Any

# Values a test (or a person at the Prometheus console) substitutes for Grafana's variables.
DEFAULT_VARIABLE_VALUES = {"$__rate_interval": "1m", "$SessionName": ".*", "$run": ".*", "$model": ".*"}


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every query target of a dashboard."""
    out = []
    for panel in dashboard.get("panels", []):
        for sub in [panel, *panel.get("panels", [])]:
            for target in sub.get("targets", []):
                if target.get("expr"):
                    out.append((sub["title"], target["expr"]))
    return out


def expand_variables(expr: str, values: dict[str, str] | None = None) -> str:
    """Replace Grafana template variables in a query so plain Prometheus can evaluate it."""
    values = {**DEFAULT_VARIABLE_VALUES, **(values or {})}
    for key in sorted(values, key=len, reverse=True):  # $__rate_interval before shorter names
        expr = expr.replace(key, values[key])
    return expr
