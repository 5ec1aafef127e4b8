"""The Deployment rehearsed on loopback (appendix notebook 07): replicas, their ConfigMap, load, CPU.

- `Replica` is one pod: TF Serving's tensorflow_model_server (backend 'binary') or the lab's stand-in
  (backend 'local') started with the Deployment's own args, its ports standing in for the pod's address,
  its ConfigMap's files in a directory standing in for the mounted volume; `replica_backend` picks which;
- `write_config_map` writes a ConfigMap's files into that directory atomically, as the kubelet swaps a
  mounted ConfigMap, with the model base paths mapped like the model store volume;
- `LabelLoad` asks for a label over REST and gRPC through the load balancer, paced and bounded in count
  and time, and records which replica and which version answered every request, failures included;
- `cpu_utilization` measures each replica's CPU as the HPA sees it: a share of the pod's CPU request.
"""

import copy
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil
import requests
from google.protobuf import text_format
from tensorflow_serving.apis import prediction_service_pb2_grpc

from model_server.contract import CHANNEL_OPTIONS
from utils.appendix.haproxy import SERVED_BY
from utils.appendix.k8s import LABEL_METADATA_PATH, MODELS_CONFIG_KEY, host_path, read_models_config
from utils.errors import LabError
from utils.payloads import PREPROCESS_SIGNATURE, b64_body, predict_request
from utils.runtime.model_server_process import (
    LAB_ONLY_FLAGS,
    STANDIN,
    TFSERVING_BINARY,
    LocalModelServer,
    TFServingBinary,
    choose_backend,
    flag_name,
)
from utils.runtime.waiting import wait_until


def retarget(resources, model_name, versions):
    """The manifests serving `model_name` at `versions` (old, new) in place of the model they name.

    For a catalog whose model differs from the manifests' (TF Hub's resnet): the model's name, base
    path and versions change in every models.config, labels keep their order (first version, second
    version), and the readiness probe's URL names the new model. What a kustomize overlay would patch.
    """
    retargeted = []
    for resource in resources:
        resource = copy.deepcopy(resource)
        if resource["kind"] == "ConfigMap" and MODELS_CONFIG_KEY in resource.get("data", {}):
            config = read_models_config(resource)
            for model in config.model_config_list.config:
                old_versions = list(model.model_version_policy.specific.versions)
                position = {v: i for i, v in enumerate(old_versions)}
                model.base_path = f"{model.base_path.rsplit('/', 1)[0]}/{model_name}"
                model.name = model_name
                model.model_version_policy.specific.ClearField("versions")
                model.model_version_policy.specific.versions.extend(versions)
                for label, version in list(model.version_labels.items()):
                    model.version_labels[label] = versions[position[version]]
            resource["data"][MODELS_CONFIG_KEY] = text_format.MessageToString(config)
        if resource["kind"] == "Deployment":
            for container in resource["spec"]["template"]["spec"]["containers"]:
                for probe in ("readinessProbe", "startupProbe", "livenessProbe"):
                    http_get = container.get(probe, {}).get("httpGet")
                    if http_get:
                        http_get["path"] = http_get["path"].replace(
                            f"/v1/models/{model_of_probe(container)}", f"/v1/models/{model_name}")
        retargeted.append(resource)
    return retargeted


def model_of_probe(container):
    return LABEL_METADATA_PATH.match(container["readinessProbe"]["httpGet"]["path"])["model"]


def write_config_map(config_map, directory, host_paths):
    """Write a ConfigMap's keys as files in `directory`; models.config's base paths mapped by `host_paths`.

    Each file is written beside its target and renamed into place, so a server polling it never reads
    half a file (the kubelet swaps a mounted ConfigMap atomically too).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for key, text in config_map.get("data", {}).items():
        if key == MODELS_CONFIG_KEY:
            config = read_models_config(config_map)
            for model in config.model_config_list.config:
                model.base_path = host_path(model.base_path, host_paths)
            text = text_format.MessageToString(config)
        staging = directory / f".{key}.tmp"
        staging.write_text(text)
        staging.replace(directory / key)
    return directory


REPLICA_BACKENDS = ("binary", "local")


def replica_backend(backend):
    """The backend the replicas run on: 'binary' or 'local' as `backend` resolves ('auto' as notebook 04).

    A replica is a process on loopback ports, which haproxy reaches directly; for 'docker' the rehearsal
    runs TF Serving's binary when this machine has one, else the stand-in, and says so in one line.
    """
    backend = choose_backend(backend)
    if backend != "docker":
        return backend
    chosen = "binary" if TFSERVING_BINARY.find() is not None else "local"
    what = "TF Serving's binary" if chosen == "binary" else STANDIN
    print(f"Backend 'docker': the replicas run {what} as processes on loopback ports, which haproxy reaches "
          "directly, not one container each.")
    return chosen


class Replica:
    """One pod of the Deployment: a model server on its own ports with the Deployment's args.

    Backend 'binary' runs TF Serving's `tensorflow_model_server` (`TFServingBinary`), 'local' the lab's
    stand-in (`LocalModelServer`); both get the container's args with the pod's ports and host paths
    (`PodTemplate.local_args`), less the stand-in's own flags for the binary. `start`, `stop`, `process`
    and `description` are the server's.
    """

    def __init__(self, name, template, grpc_port, rest_port, host_paths, log_dir, backend="local"):
        if backend not in REPLICA_BACKENDS:
            raise LabError(f"A replica runs on backend 'binary' or 'local', not {backend!r}: see `replica_backend`.")
        self.name = name
        self.grpc_port, self.rest_port = grpc_port, rest_port
        self.args = template.local_args(grpc_port, rest_port, host_paths)
        log_path = Path(log_dir) / f"{name}.log"
        if backend == "binary":
            self.args = [arg for arg in self.args if flag_name(arg) not in LAB_ONLY_FLAGS]
            self.server = TFServingBinary(self.args, log_path=log_path)
        else:
            self.server = LocalModelServer(self.args, log_path=log_path)

    @property
    def process(self):
        return self.server.process

    @property
    def description(self):
        return self.server.description

    def start(self):
        self.server.start()
        return self

    def stop(self):
        return self.server.stop()

    def label_version(self, model_name, label):
        """The version this replica resolves `label` to right now (asked of the replica, not the balancer)."""
        url = f"http://127.0.0.1:{self.rest_port}/v1/models/{model_name}/labels/{label}/metadata"
        return int(requests.get(url, timeout=5).json()["model_spec"]["version"])


@dataclass
class Answer:
    """One request of the load: when it started, over what, who answered with which version, or its error."""

    started: float  # time.time()
    protocol: str  # "REST" or "gRPC"
    replica: str = ""
    version: int = 0
    error: str = ""


class LabelLoad:
    """REST and gRPC clients asking for `label`, each paced at `rate` requests/s and bounded.

    A client stops at `stop()`, after `max_seconds`, or after `max_requests`, whichever comes first.
    REST answers carry no version: it is recognised from the predictions, which differ between versions
    (`references`: {version: probabilities for the same image}).
    """

    def __init__(self, rest_url, grpc_target, model_name, label, jpeg, references, rate=10.0, max_seconds=300,
                 max_requests=3000):
        self.answers, self.lock, self.stopped = [], threading.Lock(), threading.Event()
        self.rate, self.max_seconds, self.max_requests = rate, max_seconds, max_requests
        self.references = references
        self.rest_url = f"{rest_url}/v1/models/{model_name}/labels/{label}:predict"
        self.rest_body = b64_body([jpeg])
        self.channel = grpc.insecure_channel(grpc_target, options=CHANNEL_OPTIONS)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.grpc_request = predict_request(model_name, PREPROCESS_SIGNATURE, {"raw_images": [jpeg]}, label=label)
        self.session = requests.Session()
        self.threads = [threading.Thread(target=self._run, args=(call,), daemon=True)
                        for call in (self._rest, self._grpc)]

    def version_of(self, probabilities):
        """The version whose reference predictions are nearest to `probabilities`."""
        return min(self.references, key=lambda v: np.abs(np.subtract(self.references[v], probabilities)).max())

    def _rest(self, answer):
        response = self.session.post(self.rest_url, json=self.rest_body, timeout=30)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        answer.replica = response.headers.get(SERVED_BY, "")
        answer.version = self.version_of(response.json()["predictions"][0]["probabilities"])

    def _grpc(self, answer):
        response, call = self.stub.Predict.with_call(self.grpc_request, timeout=30)
        answer.replica = dict(call.initial_metadata()).get(SERVED_BY, "")
        answer.version = response.model_spec.version.value

    def _run(self, call):
        protocol = "REST" if call == self._rest else "gRPC"
        started = time.monotonic()
        for count in range(self.max_requests):
            if self.stopped.is_set() or time.monotonic() - started > self.max_seconds:
                return
            answer = Answer(time.time(), protocol)
            try:
                call(answer)
            except (grpc.RpcError, requests.RequestException, RuntimeError, ValueError, KeyError) as error:
                answer.error = str(error)[:200]  # every failure is counted and kept
            with self.lock:
                self.answers.append(answer)
            self.stopped.wait(max(0.0, started + (count + 1) / self.rate - time.monotonic()))  # the pace

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def wait_for(self, predicate, timeout=120):
        """Wait until `predicate(answers)` holds, answers arriving meanwhile; returns those answers.

        A LabError after `timeout`, or as soon as the load has reached its bound without them.
        """
        seen = []

        def expected_answers():
            with self.lock:
                seen[:] = self.answers
            if predicate(seen):
                return True
            if not any(thread.is_alive() for thread in self.threads):
                raise LabError("The load reached its bound before the expected answers came.")
            return False

        wait_until(expected_answers, timeout, "the expected answers coming", interval=0.1)
        return seen

    def between(self, start, end):
        """The answers to requests started in [start, end)."""
        with self.lock:
            return [a for a in self.answers if start <= a.started < end]

    def stop(self):
        self.stopped.set()
        for thread in self.threads:
            thread.join()
        self.session.close()
        self.channel.close()
        return self.answers


def reference_predictions(rest_url, model_name, versions, jpeg):
    """{version: top probabilities} for one image, asked of each version by number."""
    body = b64_body([jpeg])
    references = {}
    for version in versions:
        response = requests.post(f"{rest_url}/v1/models/{model_name}/versions/{version}:predict", json=body,
                                 timeout=30)
        response.raise_for_status()
        references[version] = response.json()["predictions"][0]["probabilities"]
    spread = np.abs(np.subtract(*references.values())).max() if len(references) == 2 else 1.0
    if spread < 1e-3:
        raise LabError(f"Versions {versions} give the same predictions: REST answers cannot tell them apart.")
    return references


def cpu_utilization(replicas, cpu_request, seconds):
    """{replica name: CPU used over `seconds`, in percent of the pod's CPU request}, as the HPA sees it."""
    processes = {r.name: psutil.Process(r.process.pid) for r in replicas}
    before = {name: sum(p.cpu_times()[:2]) for name, p in processes.items()}
    started = time.monotonic()
    time.sleep(seconds)  # the measurement window (metrics-server's is 15 s or more)
    elapsed = time.monotonic() - started
    return {name: 100 * (sum(p.cpu_times()[:2]) - before[name]) / elapsed / cpu_request
            for name, p in processes.items()}
