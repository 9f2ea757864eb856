"""`perkunas dashboards ...`: generate, upload to Grafana, install next to Ray's, print the Prometheus config."""

from __future__ import annotations

import argparse
import os
import sys

from perkunas_ray.telemetry import dashboards as dash


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dashboards", help="Grafana dashboards and the Prometheus config for Ray metrics")
    sub = p.add_subparsers(dest="dashboards_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    g = sub.add_parser("generate", help="write training.json, serving.json and prometheus.yml")
    g.add_argument("--out-dir", default="dashboards", help="folder to write (default: dashboards)")
    g.add_argument("--check", action="store_true", help="write nothing; exit 1 if the files there are stale")
    g.set_defaults(func=run_generate)

    v = sub.add_parser("provision", help="upload both dashboards to a Grafana server")
    v.add_argument("--url", required=True, help="Grafana base URL, e.g. http://localhost:3000")
    v.add_argument("--token", default=os.environ.get("GRAFANA_TOKEN"),
                   help="service-account token, or user:password (default: $GRAFANA_TOKEN)")
    v.add_argument("--folder", default="Perkunas", help="Grafana folder (created if missing; '' = General)")
    v.set_defaults(func=run_provision)

    r = sub.add_parser("install-ray", help="copy both dashboards into the Ray session's Grafana dashboards folder")
    r.add_argument("--ray-temp-dir", default=dash.DEFAULT_RAY_TEMP_DIR, help="Ray's temp dir (default: /tmp/ray)")
    r.add_argument("--session-dir", default=None, help="a Ray session dir (default: <temp dir>/session_latest)")
    r.set_defaults(func=run_install_ray)

    c = sub.add_parser("prometheus-config", help="print (or write) a prometheus.yml that scrapes Ray's nodes")
    c.add_argument("--out", default=None, help="write to this file instead of stdout")
    c.add_argument("--sd-file", default=dash.DEFAULT_SD_FILE,
                   help=f"Ray's service-discovery file (default: {dash.DEFAULT_SD_FILE})")
    c.add_argument("--scrape-interval", default=dash.SCRAPE_INTERVAL)
    c.set_defaults(func=run_prometheus_config)


def run_generate(args: argparse.Namespace) -> int:
    if args.check:
        stale = dash.stale_files(args.out_dir)
        for name in stale:
            print(f"stale: {os.path.join(args.out_dir, name)} (run `perkunas dashboards generate`)", file=sys.stderr)
        return 1 if stale else 0
    for path in dash.write_dashboards(args.out_dir):
        print(f"wrote {path}")
    return 0


def run_provision(args: argparse.Namespace) -> int:
    results = dash.provision_grafana(args.url.rstrip("/"), args.token, args.folder or None)
    for result in results:
        print(f"{result.get('status', 'ok')}: {args.url.rstrip('/')}{result.get('url', '')} "
              f"(uid {result.get('uid')}, version {result.get('version')})")
    return 0


def run_install_ray(args: argparse.Namespace) -> int:
    for path in dash.install_ray_dashboards(args.ray_temp_dir, args.session_dir):
        print(f"installed {path}")
    print("Grafana started with Ray's config (<session>/metrics/grafana/grafana.ini) lists them in its Ray folder.")
    return 0


def run_prometheus_config(args: argparse.Namespace) -> int:
    text = dash.prometheus_config(args.sd_file, args.scrape_interval)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
