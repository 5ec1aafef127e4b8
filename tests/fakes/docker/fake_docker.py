"""A fake `docker` CLI for tests: records each call and answers as the real one does.

- Every call is appended as a JSON list to $FAKE_DOCKER_STATE/calls.jsonl.
- `info` answers unless FAKE_DOCKER_ENGINE=down; `image inspect` knows the images in $FAKE_DOCKER_IMAGES
  (space-separated); `pull` fails, as offline; `run` and `rm` fail with $FAKE_DOCKER_RUN_ERROR and
  $FAKE_DOCKER_RM_ERROR when they are set.
- `run -d` does what TF Serving's image would: its entrypoint's flags, then the given ones, run by
  `python -m model_server` on the published host ports, with each `-v` mount's container paths (in the
  flags and in the model config file) translated to host paths. `logs`, `inspect`, `ps` and `rm -f` act
  on that process.
"""

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ["FAKE_DOCKER_STATE"])
CONTAINERS = STATE / "containers"
# TF Serving's image: ENV MODEL_NAME=model MODEL_BASE_PATH=/models, and its entrypoint's flags.
ENTRYPOINT_FLAGS = ["--port=8500", "--rest_api_port=8501", "--model_name=model", "--model_base_path=/models/model"]
OPTIONS_WITH_VALUE = {"--name", "-p", "--publish", "-v", "--volume", "-e", "--env", "--gpus", "--label",
                      "--network", "--memory", "--cpus", "-u", "--user", "-w", "--workdir"}


def fail(message, code=1):
    print(message, file=sys.stderr)
    return code


def container_path(name_or_id):
    for path in sorted(CONTAINERS.glob("*.json")) if CONTAINERS.is_dir() else []:
        if name_or_id in (path.stem, json.loads(path.read_text())["id"]):
            return path
    return None


def container(name_or_id):
    path = container_path(name_or_id)
    return json.loads(path.read_text()) if path else None


def running(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def port_free(port):
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def parse_run(args):
    """(options {name: [values]}, image, arguments) of `docker run ...`."""
    options, index = {}, 0
    while index < len(args) and args[index].startswith("-"):
        option = args[index]
        if option in OPTIONS_WITH_VALUE:
            options.setdefault(option, []).append(args[index + 1])
            index += 2
        else:
            options.setdefault(option, []).append(None)
            index += 1
    return options, args[index], args[index + 1:]


def to_host(text, mounts):
    """`text` (a flag's value, or a config file) with each mount's container path, where a path starts,
    replaced by its host path."""
    for host, inside in mounts:
        text = re.sub(rf'(^|"){re.escape(inside)}(?=/|"|$)', lambda match: match.group(1) + host, text,
                      flags=re.M)
    return text


def run(args):
    if os.environ.get("FAKE_DOCKER_RUN_ERROR"):
        return fail(os.environ["FAKE_DOCKER_RUN_ERROR"], 125)
    options, image, arguments = parse_run(args)
    if image not in os.environ.get("FAKE_DOCKER_IMAGES", "").split():
        return fail(f"Unable to find image '{image}' locally\ndocker: Error response from daemon: pull access denied.",
                    125)
    name = options["--name"][0]
    if container(name):
        return fail(f'docker: Error response from daemon: Conflict. The container name "/{name}" is already in use.',
                    125)
    ports = {int(spec.split(":")[1]): int(spec.split(":")[0]) for spec in options.get("-p", [])}
    mounts = [tuple(spec.split(":")[:2]) for spec in options.get("-v", [])]
    flags = []
    for flag in ENTRYPOINT_FLAGS + arguments:
        key, _, value = flag.partition("=")
        if key in ("--port", "--rest_api_port"):
            value = str(ports[int(value)])
        elif key == "--model_config_file":
            translated = STATE / f"{name}.models.config"
            translated.write_text(to_host(Path(to_host(value, mounts)).read_text(), mounts))
            value = str(translated)
        flags.append(f"{key}={to_host(value, mounts)}" if value else key)
    CONTAINERS.mkdir(parents=True, exist_ok=True)
    log = STATE / f"{name}.log"
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, "-m", "model_server", *flags], stdout=output,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    identifier = secrets.token_hex(32)
    (CONTAINERS / f"{name}.json").write_text(json.dumps({"id": identifier, "pid": process.pid, "log": str(log),
                                                         "image": image, "flags": flags,
                                                         "ports": list(ports.values())}))
    print(identifier)
    return 0


def remove(name):
    if os.environ.get("FAKE_DOCKER_RM_ERROR"):
        return fail(os.environ["FAKE_DOCKER_RM_ERROR"])
    record = container(name)
    if record is None:
        return fail(f"Error response from daemon: No such container: {name}")
    if running(record["pid"]):
        os.kill(record["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10  # as Docker's, the published ports are free once `rm -f` returns
    while (running(record["pid"]) or not all(map(port_free, record["ports"]))) and time.monotonic() < deadline:
        time.sleep(0.05)
    container_path(name).unlink()
    print(name)
    return 0


def main(args):
    STATE.mkdir(parents=True, exist_ok=True)
    with (STATE / "calls.jsonl").open("a") as calls:
        calls.write(json.dumps(args) + "\n")
    if os.environ.get("FAKE_DOCKER_ENGINE") == "down":
        return fail("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?")
    command, rest = args[0], args[1:]
    if command == "info":
        print("Server Version: fake")
        return 0
    if command == "image" and rest[0] == "inspect":
        known = rest[1] in os.environ.get("FAKE_DOCKER_IMAGES", "").split()
        return 0 if known else fail(f"Error: No such image: {rest[1]}")
    if command == "pull":
        return fail(f'Error response from daemon: Get "https://registry-1.docker.io/v2/": dial tcp: lookup '
                    f"registry-1.docker.io: no such host")
    if command == "run":
        return run(rest)
    if command == "rm":
        return remove(rest[-1])
    if command == "logs":
        record = container(rest[-1])
        return fail(f"Error: No such container: {rest[-1]}") if record is None else print(
            Path(record["log"]).read_text(), end="") or 0
    if command == "inspect":
        record = container(rest[-1])
        return fail(f"Error: No such object: {rest[-1]}") if record is None else print(
            str(running(record["pid"])).lower()) or 0
    if command == "ps":
        for path in sorted(CONTAINERS.glob("*.json")) if CONTAINERS.is_dir() else []:
            if running(json.loads(path.read_text())["pid"]):
                print(path.stem)
        return 0
    return fail(f"fake docker: {command!r} is not faked")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
