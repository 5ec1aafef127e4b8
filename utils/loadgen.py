"""Load generation and latency statistics for the benchmarks of notebook 06 and `make bench`.

Every request's outcome is checked: failures are counted apart and never timed.
"""

import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import numpy as np
import requests
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)
from tqdm import tqdm

from model_server.contract import CHANNEL_OPTIONS
from utils.payloads import predict_request


@dataclass
class LoadResult:
    """Latencies (seconds) of the successful requests, failures apart, and the wall time of the run."""

    latencies: list = field(default_factory=list)
    failures: int = 0
    errors: list = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def sent(self):
        return len(self.latencies) + self.failures

    @property
    def throughput(self):
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def percentile_ms(self, q):
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")

    def summary(self):
        return {"sent": self.sent, "failed": self.failures, "p50_ms": self.percentile_ms(50),
                "p90_ms": self.percentile_ms(90), "p99_ms": self.percentile_ms(99),
                "throughput_rps": self.throughput}


def run_load(call, total, concurrency=1, description=None):
    """Send `total` requests with `concurrency` threads; `call()` raises on failure."""
    result, lock = LoadResult(), threading.Lock()
    progress = tqdm(total=total, desc=description, unit="req", disable=description is None, leave=False)

    def one(_):
        started = time.perf_counter()
        try:
            call()
        except (grpc.RpcError, requests.RequestException, RuntimeError) as error:
            with lock:
                result.failures += 1
                result.errors.append(str(error)[:200])
        else:
            with lock:
                result.latencies.append(time.perf_counter() - started)
        progress.update()

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(total)))
    result.elapsed = time.perf_counter() - started
    progress.close()
    return result


class GrpcPredictor:
    """A persistent gRPC channel and a ready PredictRequest."""

    def __init__(self, target, model_name, signature_name, inputs, version=None, label=None):
        self.channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.request = predict_request(model_name, signature_name, inputs, version, label)

    def connect(self, timeout=30):
        """Open the connection now, so the first timed request does not pay for it."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)
        return self

    def status(self):
        """The states of the model's versions the request names, read over the same channel (GetModelStatus).

        Notebook 06 reads it before timing a first Predict, so the timing is the model's, not the channel's.
        """
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.CopyFrom(self.request.model_spec)
        request.model_spec.ClearField("signature_name")
        response = model_service_pb2_grpc.ModelServiceStub(self.channel).GetModelStatus(request, timeout=30)
        states = get_model_status_pb2.ModelVersionStatus.State
        return {status.version: states.Name(status.state) for status in response.model_version_status}

    def __call__(self):
        """One Predict; returns the version that answered."""
        return self.stub.Predict(self.request, timeout=60).model_spec.version.value

    def close(self):
        self.channel.close()


class RestPredictor:
    """A persistent HTTP session and a request body serialised once."""

    def __init__(self, url, body):
        self.session = requests.Session()
        self.url = url
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()

    def __call__(self):
        response = self.session.post(self.url, data=self.body, headers={"Content-Type": "application/json"},
                                     timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        return response

    def close(self):
        self.session.close()


def p50_ms(seconds):
    return statistics.median(seconds) * 1000


class BackgroundLoad:
    """Calls `call()` in a loop on a thread until stopped, keeping every answer and every failure apart.

    Notebook 06 (section 5) keeps asking for the `stable` label with it while the label moves: `answers` are
    (start time, version that answered), `failed` are (start time, gRPC status name).
    """

    def __init__(self, call):
        self.call = call
        self.answers, self.failed = [], []
        self.stopping, self.answered = threading.Event(), threading.Condition()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stopping.is_set():
            started = time.perf_counter()
            try:
                version = self.call()
            except grpc.RpcError as error:  # every failure is counted and shown
                self.failed.append((started, error.code().name))
                continue
            with self.answered:
                self.answers.append((started, version))
                self.answered.notify_all()

    def start(self):
        self.thread.start()
        return self

    def wait_for_answers(self, count, version=None, timeout=60):
        """Wait until `count` more answers (from `version`, if given) arrived: no guessed sleeps."""

        def counted():
            return sum(1 for _, v in self.answers if version in (None, v))

        with self.answered:
            target = counted() + count
            if not self.answered.wait_for(lambda: counted() >= target, timeout):
                raise TimeoutError(f"fewer than {count} answers within {timeout} s")

    def stop(self):
        self.stopping.set()
        self.thread.join()
        return self
