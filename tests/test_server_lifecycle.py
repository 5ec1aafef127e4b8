"""Start-up, configuration, reloading, version polling and shutdown, as TF Serving behaves."""

import shutil
import threading
import time

import grpc
import pytest
import requests
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from conftest import TFSERVING_TESTDATA
from model_server.config import uri_is_relative_path
from server_harness import copy_fixture, label_version, run_server_to_exit, running_server
from utils.deploy import models_config, write_config
from utils.runtime.model_server_process import wait_until_available

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
    (["--model_base_path=/x", "--port=0"],
     "At least one of server_options.grpc_port or server_options.grpc_socket_path must be set."),
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
    """HandleReloadConfigRequest -> (code name, message); TF Serving fails the call when it refuses."""
    request = model_management_pb2.ReloadConfigRequest(config=config)
    try:
        response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request)
    except grpc.RpcError as error:
        return error.code().name, error.details()
    assert response.HasField("status") and response.status.error_code == 0
    return "OK", ""


def not_available(version, model="hp"):
    return ("FAILED_PRECONDITION",
            f"Request to assign label to version {version} of model {model}, which is not currently available "
            "for inference")


def version_states(rest, model="hp"):
    status = requests.get(f"{rest}/v1/models/{model}").json()
    return {int(s["version"]): s["state"] for s in status["model_version_status"]}


# --- version labels, in TF Serving's order: validate, label, then load ----------------------------

def test_labels_at_start_up_are_refused_without_the_flag(tmp_path):
    base = copy_fixture("saved_model_half_plus_two_2_versions", tmp_path)
    config = tmp_path / "models.config"
    write_config(models_config("hp", base, [123, 124], {"stable": 123}), config)
    code, output = run_server_to_exit([f"--model_config_file={config}"])
    code_name, message = not_available(123)
    assert code == 255, "TF Serving's main returns -1"
    assert f"Failed to start server. Error: {code_name}: {message}\n" in output
    assert "Loading servable" not in output, "labels are checked before any version loads"


def test_labels_at_start_up_are_accepted_with_the_flag(tmp_path):
    base = copy_fixture("saved_model_half_plus_two_2_versions", tmp_path)
    config = tmp_path / "models.config"
    write_config(models_config("hp", base, [123, 124], {"stable": 123, "canary": 124}), config)
    flags = [f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models"]
    with running_server(tmp_path, flags, wait_for=[("hp", [123, 124])]) as (_, rest, _channel):
        for label in ("stable", "canary"):
            assert predict(rest, "hp", f"/labels/{label}").json() == {"predictions": [[2.5]]}
        versions = {label: label_version(rest, "hp", label) for label in ("stable", "canary")}
        assert versions == {"stable": 123, "canary": 124}


@pytest.mark.parametrize("allow", [False, True])
def test_a_new_label_on_an_unloaded_version_needs_the_flag(tmp_path, allow):
    base = copy_fixture("saved_model_half_plus_two_2_versions", tmp_path)
    config = tmp_path / "models.config"
    write_config(models_config("hp", base, [123]), config)
    flags = [f"--model_config_file={config}"] + (["--allow_version_labels_for_unavailable_models"] if allow else [])
    with running_server(tmp_path, flags, wait_for=[("hp", [123])]) as (server, rest, channel):
        outcome = reload(channel, models_config("hp", base, [123], {"canary": 124}))
        assert outcome == (("OK", "") if allow else not_available(124))
        if not allow:
            assert f"ReloadConfig failed: {not_available(124)[1]}" in server.log()
        canary = predict(rest, "hp", "/labels/canary")
        if allow:  # the label exists, its version does not serve
            assert canary.status_code == 404
            assert canary.json() == {"error": "Servable not found for request: Specific(hp, 124)"}
        else:
            assert canary.json() == {"error": "Unrecognized servable version label: canary"}


def test_a_label_is_never_moved_to_an_unavailable_version_and_the_config_loads_nothing(tmp_path):
    base = copy_fixture("saved_model_half_plus_two_2_versions", tmp_path)
    config = tmp_path / "models.config"
    write_config(models_config("hp", base, [123], {"stable": 123}), config)
    flags = [f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models"]
    with running_server(tmp_path, flags, wait_for=[("hp", [123])]) as (_, rest, channel):
        assert reload(channel, models_config("hp", base, [123, 124], {"stable": 124})) == not_available(124)
        assert version_states(rest) == {123: "AVAILABLE"}, "a refused config loads nothing"
        assert predict(rest, "hp", "/labels/stable").json() == {"predictions": [[2.5]]}


def test_canary_two_step_relabel(tmp_path):
    """TF Serving's procedure: serve both versions, then move the label."""
    base = copy_fixture("saved_model_half_plus_two_2_versions", tmp_path)
    config = tmp_path / "models.config"
    write_config(models_config("hp", base, [123], {"stable": 123}), config)
    flags = [f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models"]
    with running_server(tmp_path, flags, wait_for=[("hp", [123])]) as (_, rest, channel):
        assert reload(channel, models_config("hp", base, [123, 124], {"stable": 123, "canary": 124})) == ("OK", "")
        wait_until_available(rest, "hp", [124], timeout=20)
        assert reload(channel, models_config("hp", base, [123, 124], {"stable": 124})) == ("OK", "")
        assert label_version(rest, "hp", "stable") == 124


def test_two_step_start_adds_labels_by_polling_the_config_file(tmp_path):
    """Without the flag: start without labels, wait until AVAILABLE, then write the labels."""
    base = copy_fixture("saved_model_half_plus_two_2_versions", tmp_path)
    config = tmp_path / "models.config"
    write_config(models_config("hp", base, [123]), config)
    flags = [f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1"]
    with running_server(tmp_path, flags, wait_for=[("hp", [123])]) as (_, rest, _channel):
        write_config(models_config("hp", base, [123], {"stable": 123}), config)
        assert wait_for(lambda: predict(rest, "hp", "/labels/stable").status_code == 200)


def test_a_polled_config_labelling_an_unloaded_version_is_refused_at_every_poll(tmp_path):
    base = copy_fixture("saved_model_half_plus_two_2_versions", tmp_path)
    config = tmp_path / "models.config"
    write_config(models_config("hp", base, [123]), config)
    flags = [f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1"]
    with running_server(tmp_path, flags, wait_for=[("hp", [123])]) as (server, rest, _channel):
        write_config(models_config("hp", base, [123, 124], {"canary": 124}), config)
        line = f"PollFilesystemAndReloadConfig failed to ReloadConfig: {not_available(124)[1]}"
        assert wait_for(lambda: server.log().count(line) >= 2), "TF Serving reloads the file at every poll"
        assert version_states(rest) == {123: "AVAILABLE"}


def test_a_polled_empty_config_file_keeps_the_models_served(tmp_path):
    base = copy_fixture("saved_model_half_plus_two_cpu", tmp_path)
    config = tmp_path / "models.config"
    write_config(models_config("hp", base, [123]), config)
    flags = [f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1"]
    with running_server(tmp_path, flags, wait_for=[("hp", [123])]) as (server, rest, _channel):
        config.write_text("")
        assert wait_for(lambda: "PollFilesystemAndReloadConfig failed to ReloadConfig: Cannot transition to "
                                "requested config. It is only legal to transition from one ModelConfigList to "
                                "another." in server.log())
        assert predict(rest, "hp").json() == {"predictions": [[2.5]]}


def test_an_empty_config_at_start_up_serves_nothing_until_a_poll_brings_models(tmp_path):
    base = copy_fixture("saved_model_half_plus_two_cpu", tmp_path)
    config = tmp_path / "models.config"
    config.write_text("")
    flags = [f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1"]
    with running_server(tmp_path, flags) as (server, rest, _channel):
        assert wait_for(lambda: "Taking no action for empty config." in server.log())
        write_config(models_config("hp", base, [123]), config)
        wait_until_available(rest, "hp", [123], timeout=20)


# --- HandleReloadConfigRequest validation (ValidateModelConfigList and friends) -------------------

@pytest.fixture(scope="module")
def reload_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reload")
    base = copy_fixture("saved_model_half_plus_two_cpu", tmp)
    config = tmp / "models.config"
    write_config(models_config("hp", base, [123]), config)
    with running_server(tmp, [f"--model_config_file={config}"], wait_for=[("hp", [123])]) as (_, rest, channel):
        yield base, rest, channel


def config_with(base, *entries):
    """A ModelServerConfig listing (name, base_path, platform) entries."""
    config = model_server_config_pb2.ModelServerConfig()
    for name, base_path, platform in entries:
        config.model_config_list.config.add(name=name, base_path=str(base_path), model_platform=platform)
    return config


RELOAD_ERRORS = [
    pytest.param(lambda base: model_server_config_pb2.ModelServerConfig(), "INVALID_ARGUMENT",
                 "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is "
                 "currently supported", id="no_model_config_list"),
    pytest.param(lambda base: config_with(base, ("hp", base, "tensorflow"), ("hp", base, "tensorflow")),
                 "INVALID_ARGUMENT", "Illegal to list model hp multiple times in config list", id="duplicate_name"),
    pytest.param(lambda base: config_with(base, ("hp", "models/hp", "tensorflow")), "INVALID_ARGUMENT",
                 "Expected model hp to have an absolute path or URI; got base_path()=models/hp", id="relative_path"),
    pytest.param(lambda base: config_with(base, ("hp", "", "tensorflow")), "INVALID_ARGUMENT",
                 "Expected model hp to have an absolute path or URI; got base_path()=", id="empty_path"),
    pytest.param(lambda base: config_with(base, ("hp", base, "tensorflow_lite")), "INVALID_ARGUMENT",
                 "Illegal to change a model's platform. For model hp platform was tensorflow and new platform "
                 "requested is tensorflow_lite", id="platform_change"),
    pytest.param(lambda base: config_with(base, ("hp", base, "")), "INVALID_ARGUMENT",
                 "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                 "ModelServerConfig::model_platform, model name is hp", id="no_platform"),
    pytest.param(lambda base: config_with(base, ("hp", base, "tensorflow"), ("other", base, "onnx")),
                 "INVALID_ARGUMENT", "Model other requests unsupported platform onnx", id="unsupported_platform"),
]


@pytest.mark.parametrize("make_config, code, message", RELOAD_ERRORS)
def test_reload_refuses_invalid_configs_and_keeps_serving(reload_server, make_config, code, message):
    base, rest, channel = reload_server
    assert reload(channel, make_config(base)) == (code, message)
    assert predict(rest, "hp").json() == {"predictions": [[2.5]]}


@pytest.mark.parametrize("base_path, relative", [
    ("/models/hp", False), ("gs://bucket/hp", False), ("s3://bucket", False), ("file:///models/hp", False),
    ("models/hp", True), ("", True), ("./hp", True), ("1gs://bucket/hp", True),
])
def test_base_paths_are_relative_as_tensorflow_parses_uris(base_path, relative):
    assert uri_is_relative_path(base_path) is relative


def test_a_version_that_fails_to_load_stops_the_start_up_with_tf_servings_message(tmp_path):
    (tmp_path / "hp" / "123").mkdir(parents=True)  # a version directory without a SavedModel
    code, output = run_server_to_exit(["--model_name=hp", f"--model_base_path={tmp_path / 'hp'}"])
    line = next(line for line in output.splitlines() if line.startswith("Failed to start server"))
    assert code == 255, "TF Serving's main returns -1"
    assert line.startswith("Failed to start server. Error: UNKNOWN: 1 servable(s) did not become available: "
                           "{{{name: hp version: 123} due to error: ")  # load_servables_fast.cc's braces
    assert line.endswith("}, }")


def test_port_zero_serves_grpc_on_the_unix_socket_only(tmp_path):
    base = copy_fixture("saved_model_half_plus_two_cpu", tmp_path)
    socket_path = tmp_path / "grpc.sock"
    flags = ["--model_name=hp", f"--model_base_path={base}", f"--grpc_socket_path={socket_path}", "--port=0"]
    with running_server(tmp_path, flags, wait_for=[("hp", [123])]) as (server, _, _channel):
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            assert reload(channel, models_config("hp", base, [123])) == ("OK", "")
        assert f"Running gRPC ModelServer at UNIX socket {socket_path} ..." in server.log()
        assert "Running gRPC ModelServer at 127.0.0.1" not in server.log()


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
