"""Start, wait for and stop a model server: the local `model_server` or TF Serving in Docker.

Servers never go stale: each one is recorded and stops with the process that started it (see
`utils.processes`), its ports are checked before it starts, and the readiness wait confirms that the
server answering is the one just started.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import requests

from utils.errors import LabError
from utils.paths import BUILD_DIR, PROJECT_ROOT
from utils.processes import ManagedProcess, Stopped, claim_ports, port_holder

DEFAULT_GRPC_PORT, DEFAULT_REST_PORT = 8500, 8501
DOCKER_RECORD = BUILD_DIR / "run" / "docker-compose.json"


def free_port():
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def docker_engine_answers():
    """True when a Docker client exists and its engine answers."""
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def model_status(rest_url, model_name):
    """The status JSON of a model, or None while nothing answers at `rest_url`."""
    url = f"{rest_url}/v1/models/{model_name}"
    try:
        response = requests.get(url, timeout=2)
    except requests.ConnectionError:
        return None
    try:
        return response.json()
    except ValueError:
        raise LabError(f"Something other than TF Serving answers at {url} (HTTP {response.status_code}, "
                       f"{response.headers.get('Content-Type', 'no content type')}): stop it, or change "
                       "`rest_port` in the parameters cell.") from None


def wait_until_available(rest_url, model_name, versions, timeout=120.0, process=None):
    """Poll the status API until every version in `versions` is AVAILABLE; returns the status JSON.

    With `process` (the server's subprocess.Popen), fail as soon as it exits, and check that the server
    answering at `rest_url` is that process, not an earlier one.
    """
    deadline = time.monotonic() + timeout
    wanted = {str(v) for v in versions}
    port = urlparse(rest_url).port
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise LabError(f"The model server exited with code {process.returncode} before serving "
                           f"{model_name}: see its log.")
        status = model_status(rest_url, model_name)
        if status is not None and process is not None:
            holder = port_holder(port)
            if holder is not None and holder[0] not in (None, process.pid):
                raise LabError(f"Port {port} is answered by {holder[1]} (pid {holder[0]}), not by the server "
                               f"just started (pid {process.pid}): run `make stop`, or change `rest_port`.")
        available = {s["version"] for s in (status or {}).get("model_version_status", [])
                     if s["state"] == "AVAILABLE"}
        if wanted <= available:
            return status
        time.sleep(0.2)  # the next status poll
    raise LabError(f"{model_name} versions {sorted(wanted)} were not AVAILABLE at {rest_url} "
                   f"within {timeout:.0f} s.")


class LocalModelServer:
    """`python -m model_server` as a managed subprocess with TF Serving's flags; a context manager."""

    def __init__(self, flags, log_path=None):
        self.flags = [str(f) for f in flags]
        self.log_path = Path(log_path or BUILD_DIR / "logs" / "model_server.log")
        ports = {name: int(flag.split("=", 1)[1]) for flag in self.flags
                 for prefix, name in (("--port=", "grpc_port"), ("--rest_api_port=", "rest_port"))
                 if flag.startswith(prefix) and flag.split("=", 1)[1] != "0"}
        self.managed = ManagedProcess([sys.executable, "-m", "model_server", *self.flags], "local model server",
                                      ports, self.log_path, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})

    @property
    def process(self):
        """The server's subprocess.Popen (None before start)."""
        return self.managed.process

    def start(self):
        self.managed.start()
        return self

    def log(self):
        return self.log_path.read_text()

    def stop(self):
        """SIGTERM, as `docker stop` does; says what it stopped."""
        if self.process is None:
            return Stopped("The local model server was not started.")
        already = self.process.poll()
        code = self.managed.stop()
        what = self.managed.record.describe()
        if already is not None:
            return Stopped(f"The {what} had already exited with code {already}.", already)
        return Stopped(f"Stopped the {what}; exit code {code}.", code)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


class DockerComposeServer:
    """The real tensorflow/serving image, through the project's docker-compose.yaml."""

    def __init__(self, service="serving", ports=None):
        self.service = service
        self.ports = dict(ports or {"grpc_port": DEFAULT_GRPC_PORT, "rest_port": DEFAULT_REST_PORT})

    def start(self):
        if DOCKER_RECORD.exists():  # an earlier lab's service: down first, said in one line
            print(f"Stopped an earlier lab Docker service: {stop_docker_services()}")
        claim_ports(self.ports)
        subprocess.run(["docker", "compose", "up", "--detach", self.service], check=True, cwd=PROJECT_ROOT)
        DOCKER_RECORD.parent.mkdir(parents=True, exist_ok=True)
        DOCKER_RECORD.write_text(json.dumps({"service": self.service, "ports": self.ports}))
        return self

    def log(self):
        return subprocess.run(["docker", "compose", "logs", self.service], capture_output=True, text=True,
                              cwd=PROJECT_ROOT).stdout

    def stop(self):
        return Stopped(f"Stopped the Docker service {stop_docker_services()}.")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


def stop_docker_services(timeout=30):
    """`docker compose down` for the services the lab started; returns what it stopped."""
    record = json.loads(DOCKER_RECORD.read_text()) if DOCKER_RECORD.exists() else {"service": "serving"}
    subprocess.run(["docker", "compose", "down", "--timeout", str(timeout)], cwd=PROJECT_ROOT, check=True,
                   capture_output=True)
    DOCKER_RECORD.unlink(missing_ok=True)
    return record["service"]


def choose_backend(backend):
    """'docker', 'local', or 'auto' (docker when a Docker engine answers, else local), said in one line."""
    if backend not in ("auto", "docker", "local"):
        raise LabError(f"Unknown backend {backend!r}: choose 'auto', 'docker' or 'local'.")
    if backend == "auto":
        backend = "docker" if docker_engine_answers() else "local"
        print(f"Backend 'auto': {'a Docker engine answered' if backend == 'docker' else 'no Docker engine'}, "
              f"using '{backend}'.")
    return backend


def start_model_server(backend, local_config, grpc_port=DEFAULT_GRPC_PORT, rest_port=DEFAULT_REST_PORT,
                       extra_flags=()):
    """Start TF Serving (docker) or model_server (local) on the lab's config; returns the server."""
    if choose_backend(backend) == "docker":
        return DockerComposeServer(ports={"grpc_port": grpc_port, "rest_port": rest_port}).start()
    # The flags docker-compose.yaml gives the real image (labels at start-up need the last one).
    flags = [f"--port={grpc_port}", f"--rest_api_port={rest_port}", f"--model_config_file={local_config}",
             "--model_config_file_poll_wait_seconds=60", "--allow_version_labels_for_unavailable_models",
             "--file_system_poll_wait_seconds=1", *extra_flags]
    return LocalModelServer(flags).start()
