"""Start, wait for and stop a model server: TF Serving in Docker, TF Serving's binary, or the stand-in.

Three backends take the same TF Serving flags (`tfserving_flags`):
- `docker`: the `tensorflow/serving` image (`LAB_TFSERVING_IMAGE`), through `docker run`;
- `binary`: `tensorflow_model_server` on PATH (or named by `LAB_TFSERVING_BINARY`), TF Serving's apt package;
- `local`: `python -m model_server`, the lab's TF Serving-compatible stand-in.
`auto` picks the first of them this machine has, said in one line; `LAB_BACKEND` makes it choose without
probing.

Servers never go stale: each one is recorded in build/run/ (see `utils.runtime.processes`), its ports are
checked before it starts, and the readiness wait confirms that the server answering is the one just started.
"""

import json
import os
import select
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import requests
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from utils.deploy import CONTAINER_CONFIGS_DIR, CONTAINER_MODELS_DIR, require_file
from utils.errors import LabError
from utils.paths import BUILD_DIR
from utils.runtime.managed_server import ManagedServer, Stopped
from utils.runtime.processes import RUN_DIR, Program, claim_ports, port_holder
from utils.runtime.waiting import wait_until

DEFAULT_GRPC_PORT, DEFAULT_REST_PORT = 8500, 8501
BACKENDS = ("auto", "docker", "binary", "local")
BACKEND_ENV_VAR = "LAB_BACKEND"
TFSERVING_BINARY = Program("tensorflow_model_server", "LAB_TFSERVING_BINARY", "usr/bin/tensorflow_model_server")
DEFAULT_TFSERVING_IMAGE = "tensorflow/serving:2.21.0"  # same release as the tensorflow-serving-api pin
IMAGE_ENV_VAR, RUN_OPTIONS_ENV_VAR = "LAB_TFSERVING_IMAGE", "LAB_DOCKER_RUN_OPTIONS"
# The ports TF Serving's image listens on (its entrypoint passes them); `docker run -p` publishes them.
IMAGE_GRPC_PORT, IMAGE_REST_PORT = 8500, 8501
DOCKER_CONFIG_NAME = "models.config"  # notebook 04 writes it beside models.local.config, with container paths
DOCKER_RUN_DIR = RUN_DIR / "docker"  # one record per lab container: `make stop` and the next start remove it
# The stand-in's own flags (model_server/cli.py): TF Serving has no such flags, so they never reach it.
LAB_ONLY_FLAGS = ("bind_address", "max_request_tensor_elements")
STANDIN = "the lab's model_server stand-in"


def tfserving_flags(model_config_file, grpc_port=None, rest_port=None, extra_flags=()):
    """The TF Serving flags every backend gets: the ports (unless the image's entrypoint sets them), the
    lab's config, re-read every minute, and labels allowed on versions still loading (notebook 04)."""
    ports = [] if grpc_port is None else [f"--port={grpc_port}", f"--rest_api_port={rest_port}"]
    return [*ports, f"--model_config_file={model_config_file}", "--model_config_file_poll_wait_seconds=60",
            "--allow_version_labels_for_unavailable_models", *map(str, extra_flags)]


def flag_name(flag):
    return flag.lstrip("-").split("=", 1)[0]


def refuse_lab_only_flags(flags, what):
    """`flags`, unless one is the stand-in's own (not TF Serving's): then a LabError naming it."""
    for flag in flags:
        if flag_name(flag) in LAB_ONLY_FLAGS:
            raise LabError(f"--{flag_name(flag)} is the lab's own flag, which {what} does not have: leave it out "
                           "of `extra_flags`, or use backend 'local'.")
    return flags


def docker_engine_answers():
    """True when a Docker client exists and its engine answers `docker info`."""
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def chosen_by_environment():
    """The backend LAB_BACKEND names, or None when it is unset."""
    chosen = os.environ.get(BACKEND_ENV_VAR)
    if chosen and chosen not in BACKENDS[1:]:
        raise LabError(f"{BACKEND_ENV_VAR}={chosen!r} is not a backend: set it to 'docker', 'binary' or 'local'.")
    return chosen or None


def choose_backend(backend):
    """'docker', 'binary' or 'local' as asked; 'auto' resolved, said in one line.

    'auto' is LAB_BACKEND when set (no probing), else docker when an engine answers, else the binary when
    one is found, else local.
    """
    if backend not in BACKENDS:
        raise LabError(f"Unknown backend {backend!r}: choose 'auto', 'docker', 'binary' or 'local'.")
    if backend != "auto":
        return backend
    chosen, why = chosen_by_environment(), f"{BACKEND_ENV_VAR} is set"
    if chosen is None and docker_engine_answers():
        chosen, why = "docker", "a Docker engine answers"
    elif chosen is None and TFSERVING_BINARY.find() is not None:
        chosen, why = "binary", "no Docker engine, tensorflow_model_server found"
    elif chosen is None:
        chosen, why = "local", "no Docker engine, no tensorflow_model_server"
    what = {"docker": f"TF Serving image {tfserving_image()}", "binary": "TF Serving's binary",
            "local": STANDIN}[chosen]
    print(f"Backend 'auto': {why}, using '{chosen}' ({what}).")
    return chosen


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
    wanted = {str(v) for v in versions}
    port = urlparse(rest_url).port

    def status_once_available():
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
        return status if wanted <= available else None

    return wait_until(status_once_available, timeout,
                      f"{model_name} versions {sorted(wanted)} becoming AVAILABLE at {rest_url}")


def flag_ports(flags):
    """{parameter name: port} of the --port and --rest_api_port flags (0, "off", left out)."""
    return {name: int(flag.split("=", 1)[1]) for flag in flags
            for prefix, name in (("--port=", "grpc_port"), ("--rest_api_port=", "rest_port"))
            if flag.startswith(prefix) and flag.split("=", 1)[1] != "0"}


def default_log_path(program, ports):
    """build/logs/<program>-<port>.log, by the REST port (else the gRPC port): one log per server at a time."""
    port = ports.get("rest_port") or ports.get("grpc_port")
    return BUILD_DIR / "logs" / (f"{program}-{port}.log" if port else f"{program}.log")


class LocalModelServer(ManagedServer):
    """`python -m model_server` as a managed subprocess with TF Serving's flags; a context manager.

    `start` returns once the process runs; `wait_until_available` waits for the model's versions.
    """

    kind, article = "local model server", "the "
    description = f"{STANDIN} (Python)"

    def __init__(self, flags, log_path=None):
        self.flags = [str(f) for f in flags]
        self.log_path = Path(log_path or default_log_path("model_server", flag_ports(self.flags)))
        super().__init__([sys.executable, "-m", "model_server", *self.flags], flag_ports(self.flags),
                         self.log_path, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


class TFServingBinary(ManagedServer):
    """TF Serving's `tensorflow_model_server` (its apt package) as a managed subprocess; a context manager."""

    kind, article = "TF Serving binary", "the "
    install_hint = (f"Backend 'binary' needs TF Serving's tensorflow_model_server, which is not on PATH: install "
                    f"it (README: Backends), or set {TFSERVING_BINARY.env_var} to it, or use backend 'local'.")

    def __init__(self, flags, log_path=None, binary=None):
        self.flags = refuse_lab_only_flags([str(f) for f in flags], "tensorflow_model_server")
        self.binary = binary or TFSERVING_BINARY.find()
        self.log_path = Path(log_path or default_log_path("tensorflow_model_server", flag_ports(self.flags)))
        super().__init__([self.binary, *self.flags], flag_ports(self.flags), self.log_path)

    @property
    def available(self):
        return self.binary is not None

    @property
    def description(self):
        return f"TF Serving binary {self.binary}"


def tfserving_image():
    """The image the docker backend runs: LAB_TFSERVING_IMAGE, else TF Serving's release of the pins."""
    return os.environ.get(IMAGE_ENV_VAR) or DEFAULT_TFSERVING_IMAGE


def served_models_dir(local_config):
    """The directory holding every model a (host-path) models.config serves: mounted at /models."""
    config = text_format.Parse(Path(local_config).read_text(), model_server_config_pb2.ModelServerConfig())
    parents = {str(Path(model.base_path).parent) for model in config.model_config_list.config}
    if len(parents) != 1:
        raise LabError(f"{local_config} serves models from {len(parents)} directories: the docker backend mounts "
                       "one at /models, so keep every model under one `models_dir`.")
    return Path(parents.pop())


def docker(*args, timeout=120):
    """Run the Docker CLI; returns its CompletedProcess (text)."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def last_line(text):
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no message"


def error_line(log):
    """The last line of a server's log that reports an error (else its last line)."""
    errors = [line for line in log.splitlines() if "error" in line.lower()]
    return errors[-1].strip() if errors else last_line(log)


class DockerServer:
    """TF Serving's image in a container started with `docker run`; a context manager.

    The ports asked for are the ones published, the models and configs directories are mounted read-only
    where the container config says (/models, /configs), and `stop` removes the container.
    """

    kind, article = "TF Serving container", "the "

    def __init__(self, local_config, grpc_port=DEFAULT_GRPC_PORT, rest_port=DEFAULT_REST_PORT, extra_flags=(),
                 image=None, run_options=None):
        self.configs_dir = Path(local_config).parent
        self.models_dir = served_models_dir(local_config)
        self.ports = {"grpc_port": grpc_port, "rest_port": rest_port}
        self.image = image or tfserving_image()
        self.run_options = shlex.split(os.environ.get(RUN_OPTIONS_ENV_VAR, "")) if run_options is None \
            else list(run_options)
        self.name = f"lab-tfserving-{rest_port}"
        extra_flags = refuse_lab_only_flags([self.container_path(str(f)) for f in extra_flags], "TF Serving's image")
        # The image's entrypoint passes --port=8500 --rest_api_port=8501 itself.
        self.flags = tfserving_flags(f"{CONTAINER_CONFIGS_DIR}/{DOCKER_CONFIG_NAME}", extra_flags=extra_flags)
        self.description = f"TF Serving image {self.image} in Docker"
        self.process = None  # no child of ours: the engine runs the container
        self.started = False
        self.watchdog = None

    def container_path(self, flag):
        """A flag whose value is a path under the mounted directories, with the container's path."""
        name, _, value = flag.partition("=")
        for host, container in ((self.configs_dir, CONTAINER_CONFIGS_DIR), (self.models_dir, CONTAINER_MODELS_DIR)):
            if value and Path(value).is_relative_to(host):
                inside = Path(value).relative_to(host).as_posix()
                return f"{name}={container}" if inside == "." else f"{name}={container}/{inside}"
        return flag

    @property
    def command(self):
        """The `docker run` command line that starts this server."""
        rest_port, grpc_port = self.ports["rest_port"], self.ports["grpc_port"]
        return ["docker", "run", "-d", "--name", self.name,
                "-p", f"{rest_port}:{IMAGE_REST_PORT}", "-p", f"{grpc_port}:{IMAGE_GRPC_PORT}",
                "-v", f"{self.models_dir}:{CONTAINER_MODELS_DIR}:ro",
                "-v", f"{self.configs_dir}:{CONTAINER_CONFIGS_DIR}:ro",
                *self.run_options, self.image, *self.flags]

    @property
    def record_path(self):
        return DOCKER_RUN_DIR / f"{self.name}.json"

    def start(self, timeout=60):
        """Run the container and wait until its REST port answers; a LabError in one sentence if not."""
        if not docker_engine_answers():
            raise LabError("Backend 'docker' needs a Docker engine, and `docker info` does not answer: start Docker, "
                           "or use backend 'binary' or 'local'.")
        require_file(self.configs_dir / DOCKER_CONFIG_NAME, "04_deploy")
        self.ensure_image()
        for stopped in stop_lab_containers(self.ports.values()):
            print(f"Stopped an earlier lab container, {stopped}, which held one of its ports.")
        claim_ports(self.ports)
        result = docker(*self.command[1:])
        if result.returncode != 0:
            raise LabError(f"Docker could not start {self.image} on ports {self.ports['grpc_port']} and "
                           f"{self.ports['rest_port']} ({last_line(result.stderr)}): check the engine with "
                           "`docker info`, run `make stop`, or change `grpc_port` / `rest_port`.")
        container_id = result.stdout.strip()
        DOCKER_RUN_DIR.mkdir(parents=True, exist_ok=True)
        self.record_path.write_text(json.dumps({"name": self.name, "id": container_id, "image": self.image,
                                                "ports": self.ports}))
        self.started = True
        self.watchdog = start_container_watchdog(container_id)
        try:
            wait_until(self.answering_unless_exited, timeout, f"{self.article}{self.kind} {self.name} answering")
        except LabError:
            self.stop()
            raise
        return self

    def ensure_image(self):
        """The image is on this machine, pulled if need be; else one sentence saying how to get it."""
        if docker("image", "inspect", self.image).returncode == 0:
            return
        pulled = docker("pull", self.image, timeout=1800)
        if pulled.returncode != 0:
            raise LabError(f"The image {self.image} is not on this machine and could not be pulled "
                           f"({last_line(pulled.stderr)}): run `docker pull {self.image}` where its registry "
                           f"answers, or set {IMAGE_ENV_VAR} to an image you have.")

    def answering(self):
        """Whether anything answers HTTP on the REST port (Docker's proxy alone resets the connection)."""
        try:
            requests.get(f"http://127.0.0.1:{self.ports['rest_port']}/v1/models/_", timeout=1)
        except (requests.ConnectionError, requests.Timeout):
            return False
        return True

    def answering_unless_exited(self):
        if self.answering():
            return True
        if docker("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip() != "true":
            log = self.log()
            raise LabError(f"The container {self.name} ({self.image}) exited before it answered: "
                           f"{error_line(log)}")
        return False

    def log(self):
        """`docker logs` of the container: the server's log."""
        result = docker("logs", self.name)
        return result.stdout + result.stderr

    def stop(self):
        """Remove the container (`docker rm -f`); says what it stopped."""
        if not self.started:
            return Stopped(f"{self.article.capitalize()}{self.kind} was not started.")
        if self.watchdog is not None:
            self.watchdog.terminate()
            self.watchdog.wait()
        remove_container(self.name)
        self.started = False
        return Stopped(f"Stopped {self.article}{self.kind} {self.name} (ports {self.ports['grpc_port']} and "
                       f"{self.ports['rest_port']}).")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


def remove_container(name):
    """`docker rm -f` a lab container and forget its record; a LabError if Docker refuses."""
    result = docker("rm", "-f", name)
    if result.returncode != 0 and "No such container" not in result.stderr:
        raise LabError(f"Docker could not remove the container {name} ({last_line(result.stderr)}): run "
                       f"`docker rm -f {name}`.")
    (DOCKER_RUN_DIR / f"{name}.json").unlink(missing_ok=True)


def start_container_watchdog(container_id):
    """A small process that removes the container when this process exits (Linux: pidfd; elsewhere none:
    `make stop` or the next start removes it). By id: a later container may take the same name."""
    if not hasattr(os, "pidfd_open"):
        return None
    code = ("from utils.runtime.model_server_process import remove_after; "
            f"remove_after({os.getpid()}, {container_id!r})")
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def remove_after(starter_pid, container_id):
    """Block until the starter exits, then remove its container, so a killed kernel leaves none running."""
    try:
        starter = os.pidfd_open(starter_pid)
    except ProcessLookupError:  # it has exited already
        starter = None
    if starter is not None:
        select.select([starter], [], [])
    docker("rm", "-f", container_id)
    for record in DOCKER_RUN_DIR.glob("*.json") if DOCKER_RUN_DIR.is_dir() else []:
        if json.loads(record.read_text()).get("id") == container_id:
            record.unlink(missing_ok=True)


def stop_lab_containers(ports=None):
    """Remove the containers the lab recorded in build/run/docker/ (only those publishing one of `ports`,
    when given); returns their names."""
    records = [json.loads(path.read_text()) for path in sorted(DOCKER_RUN_DIR.glob("*.json"))] \
        if DOCKER_RUN_DIR.is_dir() else []
    names = [record["name"] for record in records
             if ports is None or set(record["ports"].values()) & set(ports)]
    for name in names:
        remove_container(name)
    return names


def start_model_server(backend, local_config, grpc_port=DEFAULT_GRPC_PORT, rest_port=DEFAULT_REST_PORT,
                       extra_flags=()):
    """Start TF Serving (docker, binary) or the stand-in (local) on the lab's config; returns the server.

    `local_config` is notebook 04's models.local.config; the docker backend serves the models.config
    beside it, whose paths are the container's.
    """
    backend = choose_backend(backend)
    if backend == "docker":
        return DockerServer(local_config, grpc_port, rest_port, extra_flags).start()
    flags = tfserving_flags(local_config, grpc_port, rest_port, extra_flags)
    server = TFServingBinary(flags) if backend == "binary" else LocalModelServer(flags)
    return server.start()
