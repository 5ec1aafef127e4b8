"""Servers that never go stale: ports checked before a start, servers stopped with their starter."""

import http.server
import json
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import grpc
import psutil
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from conftest import PROJECT_ROOT, TFSERVING_TESTDATA
from server_harness import copy_fixture, run_server_to_exit
from utils.errors import LabError
from utils.runtime.model_server_process import LocalModelServer, model_status, wait_until_available
from utils.runtime.processes import ManagedProcess, claim_ports, free_port, lab_processes, port_holder, wait_for_exit


def listening_socket():
    """A socket listening on a free loopback port, as 'some other program' would hold it."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


def starter_script(body):
    """A Python process that starts a lab process, prints its pid, then waits to be killed."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(body)], stdout=subprocess.PIPE, text=True,
                            cwd=PROJECT_ROOT)


def sleeper(port):
    """A lab-managed child that holds `port`, started from another process."""
    return starter_script(f"""
        import sys, time
        from utils.runtime.processes import ManagedProcess
        child = ManagedProcess([sys.executable, "-c",
                                "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); "
                                "s.listen(); print('listening', flush=True); time.sleep(600)"],
                               "test listener", {{"rest_port": {port}}}).start()
        print(child.pid, flush=True)
        while True:
            time.sleep(60)
    """)


def wait_listening(port, polls=300):
    """Poll, at most `polls` tenths of a second, until something listens on `port`."""
    for _ in range(polls):
        if port_holder(port) is not None:
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listened on port {port}")


def test_a_foreign_holder_is_named_with_the_fix():
    with listening_socket() as holder:
        port = holder.getsockname()[1]
        with pytest.raises(LabError) as error:
            claim_ports({"rest_port": port})
    message = str(error.value)
    assert message.startswith(f"Port {port} is held by ")
    assert f"(pid {psutil.Process().pid})" in message
    assert message.endswith("stop it, or change `rest_port` in the parameters cell.")


@pytest.mark.parametrize("name", ["grpc_port", "rest_port"])
def test_each_port_of_a_server_is_checked_before_it_starts(tmp_path, name):
    with listening_socket() as holder:
        ports = {"grpc_port": free_port(), "rest_port": free_port(), name: holder.getsockname()[1]}
        server = LocalModelServer([f"--port={ports['grpc_port']}", f"--rest_api_port={ports['rest_port']}",
                                   "--model_name=hp", f"--model_base_path={tmp_path}"], log_path=tmp_path / "log")
        with pytest.raises(LabError, match=f"change `{name}`"):
            server.start()
    assert server.process is None, "nothing was started"


def test_a_stale_lab_server_from_another_live_process_is_stopped_and_said(capsys):
    port = free_port()
    starter = sleeper(port)
    try:
        child_pid = int(starter.stdout.readline())
        wait_listening(port)
        claim_ports({"rest_port": port})
        said = capsys.readouterr().out
        assert said == f"Stopped an earlier lab test listener (pid {child_pid}, port {port}), which held port {port}.\n"
        assert wait_for_exit(child_pid, 0)
        assert port_holder(port) is None
    finally:
        starter.kill()
        starter.wait()


def test_a_server_stops_when_its_starter_is_killed():
    port = free_port()
    starter = sleeper(port)
    child_pid = int(starter.stdout.readline())
    wait_listening(port)
    starter.send_signal(signal.SIGKILL)  # as when a browser tab's kernel dies
    starter.wait()
    assert wait_for_exit(child_pid, 30), "the child outlived its starter"
    assert port_holder(port) is None
    assert child_pid not in {record.pid for record in lab_processes()}


def test_a_real_model_server_dies_with_its_killed_kernel(tmp_path):
    base = copy_fixture("saved_model_half_plus_two_cpu", tmp_path)
    grpc_port, rest_port = free_port(), free_port()
    starter = starter_script(f"""
        import time
        from utils.runtime.model_server_process import LocalModelServer, wait_until_available
        server = LocalModelServer(["--port={grpc_port}", "--rest_api_port={rest_port}", "--model_name=hp",
                                   "--model_base_path={base}"], log_path="{tmp_path / 'server.log'}").start()
        wait_until_available("http://127.0.0.1:{rest_port}", "hp", [123], process=server.process)
        print(server.process.pid, flush=True)
        while True:
            time.sleep(60)
    """)
    server_pid = int(starter.stdout.readline())
    starter.send_signal(signal.SIGKILL)
    starter.wait()
    assert wait_for_exit(server_pid, 30), "the model server outlived its kernel"
    assert port_holder(grpc_port) is None and port_holder(rest_port) is None


def test_stopping_a_server_says_what_it_stopped(tmp_path):
    base = copy_fixture("saved_model_half_plus_two_cpu", tmp_path)
    grpc_port, rest_port = free_port(), free_port()
    server = LocalModelServer([f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--model_name=hp",
                               f"--model_base_path={base}"], log_path=tmp_path / "server.log").start()
    wait_until_available(f"http://127.0.0.1:{rest_port}", "hp", [123], process=server.process)
    pid = server.process.pid
    assert repr(server.stop()) == (f"Stopped the local model server (pid {pid}, ports {grpc_port} and "
                                   f"{rest_port}); exit code 0.")
    assert pid not in {record.pid for record in lab_processes()}


class NotTfServing(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        body = b"<html>another program</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        """Quiet."""


class FakeStatus(NotTfServing):
    def do_GET(self):  # noqa: N802
        body = json.dumps({"model_version_status": [{"version": "1", "state": "AVAILABLE"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def http_server(request):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), request.param)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.mark.parametrize("http_server", [NotTfServing], indirect=True)
def test_another_program_on_the_rest_port_is_one_sentence(http_server):
    with pytest.raises(LabError, match=r"^Something other than TF Serving answers at .*/v1/models/m \(HTTP 200, "
                                       r"text/html\): stop it, or change `rest_port` in the parameters cell\.$"):
        model_status(http_server, "m")


@pytest.mark.parametrize("http_server", [FakeStatus], indirect=True)
def test_readiness_refuses_an_answer_from_another_server(http_server):
    just_started = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(LabError, match=r"is answered by .* not by the server just started"):
            wait_until_available(http_server, "m", [1], timeout=10, process=just_started)
    finally:
        just_started.kill()
        just_started.wait()


def test_model_server_refuses_a_busy_grpc_port_in_tf_servings_words(tmp_path):
    with listening_socket() as holder:
        code, output = run_server_to_exit([f"--port={holder.getsockname()[1]}", "--model_name=hp",
                                           f"--model_base_path={TFSERVING_TESTDATA / 'saved_model_half_plus_two_cpu'}"])
    assert code == 255
    assert "Failed to start server. Error: INVALID_ARGUMENT: Failed to BuildAndStart gRPC server\n" in output
    assert "Traceback" not in output


def test_model_server_with_a_busy_rest_port_says_so_and_serves_grpc(tmp_path):
    base = copy_fixture("saved_model_half_plus_two_cpu", tmp_path)
    with listening_socket() as holder:
        rest_port, grpc_port = holder.getsockname()[1], free_port()
        server = ManagedProcess([sys.executable, "-m", "model_server", f"--port={grpc_port}",
                                 f"--rest_api_port={rest_port}", "--model_name=hp", f"--model_base_path={base}"],
                                "test model server", log_path=tmp_path / "server.log").start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=60)
                request = get_model_status_pb2.GetModelStatusRequest()
                request.model_spec.name = "hp"
                status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
            assert status.model_version_status[0].version == 123
        finally:
            server.stop()
    log = (tmp_path / "server.log").read_text()
    assert f"Failed to start HTTP Server at localhost:{rest_port}" in log and "Traceback" not in log


def test_make_stop_stops_what_another_process_started(own_run_dir, capsys):
    from labtools.stop import main as stop_main

    port = free_port()
    starter = sleeper(port)
    try:
        child_pid = int(starter.stdout.readline())
        wait_listening(port)
        assert stop_main([]) == 0
        assert f"Stopped the test listener (pid {child_pid}, port {port}).\n" in capsys.readouterr().out
        assert wait_for_exit(child_pid, 0) and port_holder(port) is None
    finally:
        starter.kill()
        starter.wait()
