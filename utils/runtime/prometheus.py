"""Run a real Prometheus server that scrapes the model server, and query it (notebooks 06 and 07)."""

import shutil
from pathlib import Path

import requests

from utils.paths import BUILD_DIR
from utils.runtime.managed_server import ManagedServer
from utils.runtime.processes import PROMETHEUS
from utils.runtime.waiting import wait_until

INSTALL_HINT = ("Prometheus is not installed: run `make setup` (it installs Debian's package, or unpacks it "
                "without root, or uses brew), or set LAB_PROMETHEUS to a prometheus binary.")


def scrape_config(target, metrics_path, interval_seconds=1, extra_targets=()):
    """prometheus.yml text scraping one model server (the same job as docker-compose.yaml's).

    `extra_targets` are more host:port addresses scraped by the same job at the same path (notebook 07:
    the replicas and haproxy).
    """
    targets = ", ".join(f"'{t}'" for t in (target, *extra_targets))
    return (f"global:\n  scrape_interval: {interval_seconds}s\n  evaluation_interval: {interval_seconds}s\n"
            f"scrape_configs:\n  - job_name: tfserving\n    metrics_path: {metrics_path}\n"
            f"    static_configs:\n      - targets: [{targets}]\n")


def range_query(prometheus_url, promql, start, end, step=1.0):
    """Every series a PromQL range query returns: [{"metric": {label: value}, "values": [[t, "v"], ...]}]."""
    response = requests.get(f"{prometheus_url}/api/v1/query_range",
                            params={"query": promql, "start": start, "end": end, "step": step}, timeout=10)
    response.raise_for_status()
    return response.json()["data"]["result"]


def points(series):
    """[(timestamp, value)] of one series of a range query."""
    return [(float(t), float(v)) for t, v in series["values"]]


def series_by(prometheus_url, promql, label, start, end, step=1.0):
    """{label value: [(timestamp, value)]} of every series a PromQL range query returns."""
    return {series["metric"].get(label, ""): points(series)
            for series in range_query(prometheus_url, promql, start, end, step)}


class PrometheusServer(ManagedServer):
    """`prometheus` as a subprocess with its own config and data directory; a context manager."""

    kind = "Prometheus"
    install_hint = INSTALL_HINT

    def __init__(self, target, metrics_path, port=9090, workdir=None, extra_targets=()):
        self.binary = PROMETHEUS.find()
        self.url = f"http://127.0.0.1:{port}"
        self.ready_url = f"{self.url}/-/ready"
        self.port = port
        self.workdir = Path(workdir or BUILD_DIR / f"prometheus-{port}")  # its config, data and log
        self.config = scrape_config(target, metrics_path, extra_targets=extra_targets)
        super().__init__([self.binary, f"--config.file={self.workdir / 'prometheus.yml'}",
                          f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                         {"prometheus_port": port}, self.workdir / "prometheus.log")

    @property
    def available(self):
        return self.binary is not None

    def prepare(self):
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        (self.workdir / "prometheus.yml").write_text(self.config)

    def wait_for_scrape(self, after, timeout=15):
        """Wait until Prometheus has scraped the target at or after the Unix time `after`."""
        def scraped():
            response = requests.get(f"{self.url}/api/v1/query", params={"query": "max(timestamp(up))"}, timeout=5)
            result = response.json()["data"]["result"]
            return bool(result) and float(result[0]["value"][1]) >= after

        wait_until(scraped, timeout, "Prometheus scraping the model server")

    def query_range(self, promql, start, end, step=1.0):
        """[(timestamp, value)] of the first series a PromQL range query returns."""
        series = range_query(self.url, promql, start, end, step)
        return points(series[0]) if series else []
