"""Start `python -m model_server` on free ports for tests, and talk to it."""

import shutil
import subprocess
import sys
from contextlib import contextmanager

import grpc
import requests

from conftest import TFSERVING_TESTDATA
from model_server.contract import CHANNEL_OPTIONS
from utils.runtime.model_server_process import LocalModelServer, wait_until_available
from utils.runtime.processes import free_port


def label_version(rest_url, model_name, label):
    """The version a label points at: the label's metadata names it (TF Serving's status API ignores labels)."""
    metadata = requests.get(f"{rest_url}/v1/models/{model_name}/labels/{label}/metadata").json()
    return int(metadata["model_spec"]["version"])


def copy_fixture(name, target_dir):
    """Copy one of TF Serving's test models into `target_dir`; returns its base path."""
    target = target_dir / name
    shutil.copytree(TFSERVING_TESTDATA / name, target)
    return target


@contextmanager
def running_server(tmp_path, flags, wait_for=(), timeout=90):
    """A model server with gRPC and REST on free ports; yields (server, rest_url, grpc_channel)."""
    grpc_port, rest_port = free_port(), free_port()
    server = LocalModelServer([f"--port={grpc_port}", f"--rest_api_port={rest_port}", *flags],
                              log_path=tmp_path / f"server-{rest_port}.log")
    rest_url = f"http://127.0.0.1:{rest_port}"
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=CHANNEL_OPTIONS)
    try:
        for model_name, versions in wait_for:
            wait_until_available(rest_url, model_name, versions, timeout=timeout, process=server.process)
        yield server, rest_url, channel
    finally:
        channel.close()
        server.stop()


def run_server_to_exit(flags, timeout=60):
    """Run the server expecting it to refuse to start; returns (exit code, output)."""
    result = subprocess.run([sys.executable, "-m", "model_server", *flags], capture_output=True, text=True,
                            timeout=timeout, env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"})
    return result.returncode, result.stdout + result.stderr
