"""Start-up, configuration, reloading, version polling and shutdown, as TF Serving behaves."""

import shutil
import threading
import time

import grpc
import pytest
import requests
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from conftest import TFSERVING_TESTDATA
from server_harness import copy_fixture, run_server_to_exit, running_server
from utils.deploy import models_config, write_config
from utils.server import wait_until_available

PREDICT = {"instances": [[1.0]]}


def predict(rest, model, path=""):
    return requests.post(f"{rest}/v1/models/{model}{path}:predict", json=PREDICT)


def wait_for(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_bad_model_config_is_refused_at_start():
    code, output = run_server_to_exit([f"--model_config_file={TFSERVING_TESTDATA / 'bad_model_config.txt'}"])
    assert code != 0
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in output


def test_unreadable_model_config_is_refused_at_start(tmp_path):
    code, output = run_server_to_exit([f"--model_config_file={tmp_path / 'missing.config'}"])
    assert code != 0 and "Could not read model config file" in output


@pytest.mark.parametrize("flags, message", [
    ([], "Both server_options.model_base_path and server_options.model_config_file are empty!"),
    (["--model_base_path=/x", "--frobnicate=1"], "Unknown command line flag 'frobnicate'"),
    (["--model_base_path=/x", "--ssl_config_file=a"], "--ssl_config_file is a TensorFlow Serving flag this "
                                                       "server does not support"),
    (["--model_base_path=/x", "--port=http"], "Illegal value 'http' specified for int flag 'port'"),
    (["--model_base_path=/x", "--enable_model_warmup=maybe"], "Illegal value 'maybe' specified for bool flag"),
    (["--model_base_path=/x", "--batching_parameters_file=b.txt"],
     "server_options.batching_parameters_file is set without setting server_options.enable_batching to true."),
    (["--model_base_path=/x", "--port=0"], "server_options.grpc_port is not set."),
])
def test_command_line_errors(flags, message):
    code, output = run_server_to_exit(flags)
    assert code == 1 and message in output


def test_good_model_config_serves_two_models(tmp_path):
    text = (TFSERVING_TESTDATA / "good_model_config.txt").read_text()
    text = text.replace("${TEST_HALF_PLUS_TWO_DIR}", str(copy_fixture("saved_model_half_plus_two_cpu", tmp_path)))
    text = text.replace("${TEST_HALF_PLUS_THREE_DIR}", str(copy_fixture("saved_model_half_plus_three", tmp_path)))
    config = tmp_path / "good_model_config.txt"
    config.write_text(text)
    with running_server(tmp_path, [f"--model_config_file={config}"],
                        wait_for=[("half_plus_two", [123]), ("half_plus_three", [123])]) as (server, rest, _):
        assert predict(rest, "half_plus_two").json() == {"predictions": [[2.5]]}
        assert predict(rest, "half_plus_three").json() == {"predictions": [[3.5]]}
        assert "Running gRPC ModelServer at 127.0.0.1:" in server.log()
        assert "Exporting HTTP/REST API at:127.0.0.1:" in server.log()
    assert server.process.returncode == 0 and "Shutting down" in server.log()


def test_config_file_polling_switches_models_and_survives_a_bad_file(tmp_path):
    two = copy_fixture("saved_model_half_plus_two_cpu", tmp_path)
    three = copy_fixture("saved_model_half_plus_three", tmp_path)
    config = tmp_path / "models.config"
    write_config(models_config("half_plus_two", two, [123]), config)
    flags = [f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1"]
    with running_server(tmp_path, flags, wait_for=[("half_plus_two", [123])]) as (server, rest, _):
        write_config(models_config("half_plus_three", three, [123]), config)
        wait_until_available(rest, "half_plus_three", [123], timeout=10)
        assert wait_for(lambda: predict(rest, "half_plus_two").status_code == 404, timeout=5)
        config.write_text("model_config_list { this is not a config")
        # TF Serving's two lines: protobuf's parser error, then PollFilesystemAndReloadConfig's.
        assert wait_for(lambda: "Failed to read ModelServerConfig file: Invalid protobuf file" in server.log())
        assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in server.log()
        assert predict(rest, "half_plus_three").json() == {"predictions": [[3.5]]}


def test_file_system_polling_picks_up_new_and_removed_versions_without_failures(tmp_path):
    base = tmp_path / "hp"
    base.mkdir()
    shutil.copytree(TFSERVING_TESTDATA / "saved_model_half_plus_two_2_versions" / "00000123", base / "123")
    flags = ["--model_name=hp", f"--model_base_path={base}", "--file_system_poll_wait_seconds=1"]
    with running_server(tmp_path, flags, wait_for=[("hp", [123])]) as (server, rest, _):
        failures, sent, stop = [], [0], threading.Event()

        def load():
            session = requests.Session()
            while not stop.is_set():
                response = session.post(f"{rest}/v1/models/hp:predict", json=PREDICT)
                sent[0] += 1
                if response.status_code != 200:
                    failures.append(response.text)

        generator = threading.Thread(target=load)
        generator.start()
        try:
            shutil.copytree(TFSERVING_TESTDATA / "saved_model_half_plus_two_2_versions" / "00000124", base / "124")
            wait_until_available(rest, "hp", [124], timeout=15)
            assert wait_for(lambda: [s["state"] for s in requests.get(f"{rest}/v1/models/hp/versions/123")
                                     .json()["model_version_status"]] == ["END"])
            shutil.rmtree(base / "124")
            wait_until_available(rest, "hp", [123], timeout=15)
        finally:
            stop.set()
            generator.join()
        assert sent[0] > 20 and failures == [], (sent, failures[:3])


def reload(channel, config):
    request = model_management_pb2.ReloadConfigRequest(config=config)
    return model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request).status


@pytest.mark.parametrize("allow", [False, True])
def test_labels_on_unavailable_versions(tmp_path, allow):
    base = copy_fixture("saved_model_half_plus_two_2_versions", tmp_path)
    config = tmp_path / "models.config"
    write_config(models_config("hp", base, [123]), config)
    flags = [f"--model_config_file={config}"] + (["--allow_version_labels_for_unavailable_models"] if allow else [])
    with running_server(tmp_path, flags, wait_for=[("hp", [123])]) as (server, rest, channel):
        status = reload(channel, models_config("hp", base, [123], {"canary": 124}))
        if allow:  # a new label may point at a version that is not loaded (yet)
            assert status.error_code == 0
        else:
            assert status.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
            assert status.error_message == ("Request to assign label to version 124 of model hp, which is not "
                                            "currently available for inference")
        # Moving an existing label to an unavailable version is refused even with the flag.
        reload(channel, models_config("hp", base, [123], {"stable": 123}))
        status = reload(channel, models_config("hp", base, [123], {"stable": 124}))
        assert status.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert predict(rest, "hp", "/labels/stable").json() == {"predictions": [[2.5]]}


def test_canary_two_step_relabel(tmp_path):
    """TF Serving's procedure: serve both versions, then move the label."""
    base = copy_fixture("saved_model_half_plus_two_2_versions", tmp_path)
    config = tmp_path / "models.config"
    write_config(models_config("hp", base, [123], {"stable": 123}), config)
    with running_server(tmp_path, [f"--model_config_file={config}"], wait_for=[("hp", [123])]) as (_, rest, channel):
        assert reload(channel, models_config("hp", base, [123, 124], {"stable": 123, "canary": 124})).error_code == 0
        assert reload(channel, models_config("hp", base, [123, 124], {"stable": 124})).error_code == 0
        status = requests.get(f"{rest}/v1/models/hp/labels/stable").json()
        assert status["model_version_status"][0]["version"] == "124"


def test_grpc_over_a_unix_socket(tmp_path):
    base = copy_fixture("saved_model_half_plus_two_cpu", tmp_path)
    socket_path = tmp_path / "grpc.sock"
    flags = ["--model_name=hp", f"--model_base_path={base}", f"--grpc_socket_path={socket_path}"]
    with running_server(tmp_path, flags, wait_for=[("hp", [123])]):
        from tensorflow_serving.apis import get_model_status_pb2
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = "hp"
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request)
            assert status.model_version_status[0].version == 123


def test_rest_timeout_answers_deadline_exceeded(tmp_path, exported_models):
    flags = ["--model_name=efficientnet_lite", f"--model_base_path={exported_models / 'efficientnet_lite'}",
             "--rest_api_timeout_in_ms=1"]
    with running_server(tmp_path, flags, wait_for=[("efficientnet_lite", [240])]) as (_, rest, _channel):
        body = {"instances": [[[[0.5] * 3] * 224] * 224] * 8}
        response = requests.post(f"{rest}/v1/models/efficientnet_lite:predict", json=body)
        assert response.status_code == 504 and response.json() == {"error": "Deadline Exceeded"}


def test_sigint_shuts_down_cleanly(tmp_path):
    import signal

    base = copy_fixture("saved_model_half_plus_two_cpu", tmp_path)
    with running_server(tmp_path, ["--model_name=hp", f"--model_base_path={base}"],
                        wait_for=[("hp", [123])]) as (server, _, _channel):
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(30) == 0
    assert "Shutting down" in server.log()
