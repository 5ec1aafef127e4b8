"""Start, wait for and stop a model server: the local `model_server` or TF Serving in Docker."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from utils.errors import LabError
from utils.paths import BUILD_DIR, PROJECT_ROOT

DEFAULT_GRPC_PORT, DEFAULT_REST_PORT = 8500, 8501


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
    """The status JSON of a model, or None while the server does not answer."""
    try:
        response = requests.get(f"{rest_url}/v1/models/{model_name}", timeout=2)
    except requests.ConnectionError:
        return None
    return response.json()


def wait_until_available(rest_url, model_name, versions, timeout=120.0, process=None):
    """Poll the status API until every version in `versions` is AVAILABLE; returns the status JSON."""
    deadline = time.monotonic() + timeout
    wanted = {str(v) for v in versions}
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise LabError(f"The model server exited with code {process.returncode} before serving "
                           f"{model_name}: see its log.")
        status = model_status(rest_url, model_name)
        available = {s["version"] for s in (status or {}).get("model_version_status", [])
                     if s["state"] == "AVAILABLE"}
        if wanted <= available:
            return status
        time.sleep(0.2)
    raise LabError(f"{model_name} versions {sorted(wanted)} were not AVAILABLE at {rest_url} "
                   f"within {timeout:.0f} s.")


class LocalModelServer:
    """`python -m model_server` as a subprocess with TF Serving's flags; a context manager."""

    def __init__(self, flags, log_path=None):
        self.flags = list(flags)
        self.log_path = Path(log_path or BUILD_DIR / "logs" / "model_server.log")
        self.process = None

    def start(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "model_server", *self.flags], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        log.close()
        return self

    def log(self):
        return self.log_path.read_text()

    def stop(self, timeout=30):
        """SIGTERM, as `docker stop` does; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


class DockerComposeServer:
    """The real tensorflow/serving image, through the project's docker-compose.yaml."""

    def __init__(self, service="serving"):
        self.service = service

    def start(self):
        subprocess.run(["docker", "compose", "up", "--detach", self.service], check=True, cwd=PROJECT_ROOT)
        return self

    def log(self):
        return subprocess.run(["docker", "compose", "logs", self.service], capture_output=True, text=True,
                              cwd=PROJECT_ROOT).stdout

    def stop(self, timeout=30):
        return subprocess.run(["docker", "compose", "down", "--timeout", str(timeout)], cwd=PROJECT_ROOT).returncode


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
        return DockerComposeServer().start()
    # The flags docker-compose.yaml gives the real image (labels at start-up need the last one).
    flags = [f"--port={grpc_port}", f"--rest_api_port={rest_port}", f"--model_config_file={local_config}",
             "--model_config_file_poll_wait_seconds=60", "--allow_version_labels_for_unavailable_models",
             "--file_system_poll_wait_seconds=1", *extra_flags]
    return LocalModelServer(flags).start()
