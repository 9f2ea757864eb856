"""Telemetry: the JSONL step log, metric names shared by emitters and dashboards, the HTML report."""
