"""haproxy in front of local replicas, as a Kubernetes Service with an L7 proxy (appendix notebook 07).

- REST over HTTP/1.1 and gRPC over h2 (cleartext HTTP/2, as grpcio's insecure channels speak it), each
  balanced per request, round robin, so one gRPC connection spreads over every ready replica.
- Replicas join and leave at run time through haproxy's admin socket. A replica joins as not ready and
  receives traffic only once the health check passes: the check is the Deployment's readiness probe
  (path, period, timeout, thresholds), as the kubelet runs it. It leaves drained: no new request, and
  removed only once its requests in flight are answered.
- Each response names the replica that answered in the `x-served-by` header (gRPC: initial metadata).
- haproxy's Prometheus exporter listens on its own port, at the same path as TF Serving's metrics, so one
  scrape job covers the replicas and haproxy.
"""

import os
import signal
import socket
from pathlib import Path

from utils.errors import LabError
from utils.paths import BUILD_DIR
from utils.runtime.managed_server import ManagedServer
from utils.runtime.processes import HAPROXY, UNPACKED_PREFIX, wait_for_exit
from utils.runtime.waiting import wait_until

INSTALL_HINT = ("haproxy is not installed: run `make setup` (it installs Debian's package, or unpacks it "
                "without root, or uses brew), or set LAB_HAPROXY to a haproxy binary.")
SERVED_BY = "x-served-by"
BACKENDS = ("rest", "grpc")


def health_check(probe):
    """haproxy's check settings from a Kubernetes httpGet probe, with Kubernetes' defaults."""
    return {"path": probe["httpGet"]["path"], "inter_s": probe.get("periodSeconds", 10),
            "timeout_s": probe.get("timeoutSeconds", 1), "fall": probe.get("failureThreshold", 3),
            "rise": probe.get("successThreshold", 1)}


def haproxy_config(check, rest_port, grpc_port, metrics_port, metrics_path, admin_socket):
    """haproxy.cfg text: a REST and a gRPC frontend, their backends checked like the readiness probe."""
    backend_checks = (
        "    balance roundrobin\n"
        "    option httpchk\n"
        f"    http-check send meth GET uri {check['path']}\n"
        "    http-check expect status 200-399\n"  # what Kubernetes counts as a passing httpGet probe
        f"    timeout check {check['timeout_s']}s\n"
        f"    default-server inter {check['inter_s']}s fall {check['fall']} rise {check['rise']}\n"
        f"    http-response set-header {SERVED_BY} %[srv_name]\n"
    )
    return (
        "global\n"
        f"    stats socket {admin_socket} mode 600 level admin\n"
        "    maxconn 512\n"
        "defaults\n"
        "    mode http\n"
        "    timeout connect 2s\n"
        "    timeout client 60s\n"
        "    timeout server 60s\n"
        "    retries 2\n"  # a connection refused (a replica that just went away) is retried on another
        "    option redispatch\n"
        "frontend rest\n"
        f"    bind 127.0.0.1:{rest_port}\n"
        "    default_backend rest\n"
        "frontend grpc\n"
        f"    bind 127.0.0.1:{grpc_port} proto h2\n"
        "    default_backend grpc\n"
        "frontend metrics\n"
        f"    bind 127.0.0.1:{metrics_port}\n"
        f"    http-request use-service prometheus-exporter if {{ path {metrics_path} }}\n"
        "backend rest\n" + backend_checks +
        "backend grpc\n" + backend_checks
    )


class LoadBalancer(ManagedServer):
    """haproxy as a managed subprocess; replicas are added and drained at run time. A context manager."""

    kind = "haproxy"
    install_hint = INSTALL_HINT

    def __init__(self, readiness_probe, rest_port, grpc_port, metrics_port, metrics_path,
                 workdir=None):
        self.binary = HAPROXY.find()
        self.check = health_check(readiness_probe)
        self.rest_url = f"http://127.0.0.1:{rest_port}"
        self.grpc_target = f"127.0.0.1:{grpc_port}"
        self.metrics_url = self.ready_url = f"http://127.0.0.1:{metrics_port}{metrics_path}"
        self.workdir = Path(workdir or BUILD_DIR / f"haproxy-{rest_port}")  # its config, socket and log
        self.admin_socket = self.workdir / "admin.sock"
        self.config = haproxy_config(self.check, rest_port, grpc_port, metrics_port, metrics_path,
                                     self.admin_socket)
        self.ports = {"rest_port": rest_port, "grpc_port": grpc_port, "haproxy_metrics_port": metrics_port}
        env = None  # a rootless unpack (below UNPACKED_PREFIX) needs its libraries beside it
        if self.binary and Path(self.binary).is_relative_to(UNPACKED_PREFIX):
            env = {**os.environ,
                   "LD_LIBRARY_PATH": ":".join(str(p) for p in UNPACKED_PREFIX.glob("usr/lib/*-linux-gnu"))}
        super().__init__([self.binary, "-db", "-f", self.workdir / "haproxy.cfg"], self.ports,
                         self.workdir / "haproxy.log", env=env)

    @property
    def available(self):
        return self.binary is not None

    def prepare(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.admin_socket.unlink(missing_ok=True)
        (self.workdir / "haproxy.cfg").write_text(self.config)

    def command(self, line):
        """One command on haproxy's admin socket (several may be joined with ';'); returns its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as admin:
            admin.settimeout(10)
            admin.connect(str(self.admin_socket))
            admin.sendall(f"{line}\n".encode())
            chunks = []
            while chunk := admin.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode().strip()

    def add(self, name, rest_port, grpc_port):
        """Add a replica as not ready: it gets traffic once its health check passes `rise` times."""
        for backend, port in (("rest", rest_port), ("grpc", grpc_port)):
            # The gRPC server is checked on the replica's REST port, over HTTP/1.1, like the probe.
            options = "check" if backend == "rest" else f"proto h2 check port {rest_port} check-proto h1"
            answer = self.command(f"add server {backend}/{name} 127.0.0.1:{port} {options}")
            if "New server registered" not in answer:
                raise LabError(f"haproxy refused replica {name}: {answer}")
            # Added servers start in maintenance; leaving it makes a server UP until a check fails, so it
            # is marked down in the same command: a replica is not ready until its probe passes.
            self.command(f"enable health {backend}/{name}; enable server {backend}/{name}; "
                         f"set server {backend}/{name} health down")

    def stats(self):
        """{(backend, replica): {"status": ..., "sessions": current requests}} from haproxy's `show stat`."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","))) for line in lines[1:] if line]
        return {(r["pxname"], r["svname"]): {"status": r["status"], "sessions": int(r["scur"] or 0)}
                for r in rows if r["pxname"] in BACKENDS and r["svname"] not in ("FRONTEND", "BACKEND")}

    def ready(self, name):
        """True while both backends count the replica as UP."""
        stats = self.stats()
        return all(stats.get((backend, name), {}).get("status", "").startswith("UP") for backend in BACKENDS)

    def wait_until_ready(self, name, timeout=180, process=None):
        """Wait until the health checks pass on replica `name`; fail fast if its `process` exits."""
        def replica_ready():
            if process is not None and process.poll() is not None:
                raise LabError(f"Replica {name} exited with code {process.returncode} before it was ready.")
            return self.ready(name)

        wait_until(replica_ready, timeout, f"replica {name} passing its readiness probe")

    def drain(self, name, timeout=60):
        """Take replica `name` out of rotation and wait until its requests in flight are answered."""
        for backend in BACKENDS:
            self.command(f"set server {backend}/{name} state maint")
        wait_until(lambda: not any(self.stats()[(backend, name)]["sessions"] for backend in BACKENDS), timeout,
                   f"the requests in flight on replica {name} being answered", interval=0.05)

    def remove(self, name):
        """Forget a drained replica once it has stopped (haproxy deletes no server with open connections)."""
        for backend in BACKENDS:
            answer = self.command(f"del server {backend}/{name}")
            if "Server deleted" not in answer:
                raise LabError(f"haproxy could not remove replica {name}: {answer}")

    def stop_softly(self, timeout):
        """SIGUSR1: haproxy stops once its requests in flight are answered (else `stop` ends it)."""
        self.process.send_signal(signal.SIGUSR1)
        wait_for_exit(self.managed.pid, timeout)
