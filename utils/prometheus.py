"""Run a real Prometheus server that scrapes the model server, and query it (notebook 06)."""

import shutil
import time
from pathlib import Path

import requests

from utils.errors import LabError
from utils.paths import BUILD_DIR
from utils.processes import PROMETHEUS, ManagedProcess, Stopped

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


class PrometheusServer:
    """`prometheus` as a subprocess with its own config and data directory; a context manager."""

    def __init__(self, target, metrics_path, port=9090, workdir=BUILD_DIR / "prometheus", extra_targets=()):
        self.binary = PROMETHEUS.find()
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.workdir = Path(workdir)
        self.config = scrape_config(target, metrics_path, extra_targets=extra_targets)
        self.managed = None

    @property
    def available(self):
        return self.binary is not None

    def start(self, timeout=30):
        if not self.available:
            raise LabError(INSTALL_HINT)
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        (self.workdir / "prometheus.yml").write_text(self.config)
        self.managed = ManagedProcess(
            [self.binary, f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            "Prometheus", {"prometheus_port": self.port}, self.workdir / "prometheus.log").start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.managed.exited() is not None:
                raise LabError(f"Prometheus exited with code {self.managed.exited()}: see "
                               f"{self.workdir / 'prometheus.log'}.")
            try:
                ready = requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200
            except requests.ConnectionError:  # not listening yet
                ready = False
            if ready:
                return self
            time.sleep(0.2)
        raise LabError(f"Prometheus was not ready within {timeout} s.")

    def wait_for_scrape(self, after, timeout=15):
        """Wait until Prometheus has scraped the target at or after the Unix time `after`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = requests.get(f"{self.url}/api/v1/query", params={"query": "max(timestamp(up))"}, timeout=5)
            result = response.json()["data"]["result"]
            if result and float(result[0]["value"][1]) >= after:
                return
            time.sleep(0.2)
        raise LabError(f"Prometheus did not scrape the model server within {timeout} s.")

    def query_range(self, promql, start, end, step=1.0):
        """[(timestamp, value)] of the first series a PromQL range query returns."""
        response = requests.get(f"{self.url}/api/v1/query_range",
                                params={"query": promql, "start": start, "end": end, "step": step}, timeout=10)
        response.raise_for_status()
        series = response.json()["data"]["result"]
        return [(float(t), float(v)) for t, v in series[0]["values"]] if series else []

    def stop(self):
        """Stop Prometheus if it runs; says what it stopped."""
        if self.managed is None:
            return Stopped("Prometheus was not started.")
        code = self.managed.stop()
        return Stopped(f"Stopped {self.managed.record.describe()}; exit code {code}.", code)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()
