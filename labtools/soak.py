"""`python -m labtools soak`: hours of mixed REST and gRPC load on the lab's model, with config churn.

Two REST and two gRPC clients ask label `stable` for `serving_preprocess` on one JPEG, with batching
and monitoring on, while the config changes every few seconds as a canary rollout does, in TF Serving's
steps (ModelService.HandleReloadConfigRequest): serve both versions with `stable` on the old one, wait
until the new one is AVAILABLE, move `stable`, unload the old one; then back. The server's resident
memory is sampled throughout. It passes when no request failed and the RSS at the end is within
`--max-growth` of the RSS at `--warm-minute` (a leak grows past any warm-up).
"""

import argparse
import itertools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import tensorflow as tf
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc, prediction_service_pb2_grpc
from tqdm import tqdm

from model_server.contract import CHANNEL_OPTIONS, BatchingParameters
from utils.deploy import exported_versions, models_config, monitoring_config, write_config
from utils.errors import LabError
from utils.images import get_image_list, read_image_bytes
from utils.loadgen import RestPredictor
from utils.paths import BUILD_DIR, project_path
from utils.payloads import PREPROCESS_SIGNATURE, b64_body, predict_request
from utils.runtime.model_server_process import LocalModelServer, wait_until_available
from utils.runtime.processes import free_port

SOAK_DIR = BUILD_DIR / "soak"


@dataclass
class Tally:
    """What the clients and the churn did, counted under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    answered: int = 0
    failed: int = 0
    errors: list = field(default_factory=list)
    config_changes: int = 0

    def count(self, error=None):
        with self.lock:
            if error is None:
                self.answered += 1
            else:
                self.failed += 1
                self.errors.append(error)


def resident_kib(pid):
    """VmRSS of a process, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def client_loop(call, tally, stopping):
    while not stopping.is_set():
        try:
            call()
        except (grpc.RpcError, RuntimeError, OSError) as error:
            tally.count(f"{type(error).__name__}: {str(error)[:200]}")
        else:
            tally.count()


def churn_loop(model_name, base_path, versions, rest_url, stub, every, tally, stopping):
    """Every `every` s one config change, rolling `stable` from one version to the other and back in TF
    Serving's steps; a refused change or a version that never becomes AVAILABLE counts as a failure."""
    for old, new in itertools.cycle([versions, versions[::-1]]):
        for served, stable in (([old, new], old), ([old, new], new), ([new], new)):
            if stopping.wait(every):
                return
            config = models_config(model_name, base_path, served, {"stable": stable})
            try:
                stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=120)
                if stable == old:  # step 1 ends when the new version is AVAILABLE
                    wait_until_available(rest_url, model_name, [new], timeout=120)
            except (grpc.RpcError, LabError) as error:
                tally.count(f"config change: {type(error).__name__}: {str(error)[:200]}")
            else:
                with tally.lock:
                    tally.config_changes += 1


def soak(models_dir, minutes, churn_seconds, warm_minute, max_growth):
    """Run the soak; returns (passed, summary lines)."""
    ((model_name, versions),) = exported_versions(models_dir).items()
    if len(versions) < 2:
        raise LabError(f"The soak rolls between two versions, and {models_dir / model_name} has {versions}: "
                       "run notebook 03 first.")
    versions, base_path = versions[:2], models_dir / model_name
    SOAK_DIR.mkdir(parents=True, exist_ok=True)
    batching = BatchingParameters()
    batching.max_batch_size.value, batching.batch_timeout_micros.value = 8, 2000
    batching.num_batch_threads.value, batching.max_enqueued_batches.value = 2, 100
    write_config(batching, SOAK_DIR / "batching.config")
    write_config(monitoring_config(), SOAK_DIR / "monitoring.config")
    write_config(models_config(model_name, base_path, [versions[0]], {"stable": versions[0]}),
                 SOAK_DIR / "models.config")
    grpc_port, rest_port = free_port(), free_port()
    rest_url, jpeg = f"http://127.0.0.1:{rest_port}", read_image_bytes(get_image_list()[0])
    flags = [f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--enable_batching",
             f"--batching_parameters_file={SOAK_DIR / 'batching.config'}",
             f"--monitoring_config_file={SOAK_DIR / 'monitoring.config'}",
             f"--model_config_file={SOAK_DIR / 'models.config'}", "--allow_version_labels_for_unavailable_models"]
    tally, stopping, samples = Tally(), threading.Event(), []
    with LocalModelServer(flags, log_path=SOAK_DIR / "model_server.log") as server, \
            grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=CHANNEL_OPTIONS) as channel:
        wait_until_available(rest_url, model_name, versions[:1], timeout=120, process=server.process)
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
        request = predict_request(model_name, PREPROCESS_SIGNATURE, {"raw_images": tf.constant([jpeg])},
                                  label="stable")
        rest = [RestPredictor(f"{rest_url}/v1/models/{model_name}/labels/stable:predict", b64_body([jpeg]))
                for _ in range(2)]
        calls = [*rest, *[lambda: predict(request, timeout=60)] * 2]
        threads = [threading.Thread(target=client_loop, args=(call, tally, stopping)) for call in calls]
        threads.append(threading.Thread(target=churn_loop, args=(
            model_name, base_path, versions, rest_url, model_service_pb2_grpc.ModelServiceStub(channel),
            churn_seconds, tally, stopping)))
        for thread in threads:
            thread.start()
        started = time.monotonic()
        try:
            with tqdm(total=int(minutes * 60), unit="s", desc="soak") as progress:
                while (elapsed := time.monotonic() - started) < minutes * 60:
                    if server.process.poll() is not None:
                        raise LabError(f"The model server exited with code {server.process.returncode} "
                                       f"during the soak: see {SOAK_DIR / 'model_server.log'}.")
                    samples.append((elapsed / 60, resident_kib(server.process.pid)))
                    progress.update(int(elapsed) - progress.n)
                    progress.set_postfix(rss_mib=samples[-1][1] // 1024, answered=tally.answered,
                                         failed=tally.failed, changes=tally.config_changes)
                    stopping.wait(min(10, max(0.1, minutes * 60 - elapsed)))
        finally:
            stopping.set()
            for thread in threads:
                thread.join()
            for client in rest:
                client.close()
    return verdict(samples, tally, warm_minute, max_growth)


def verdict(samples, tally, warm_minute, max_growth):
    """(passed, lines): failures, config changes, and RSS growth from `warm_minute` to the end."""
    warm = next((kib for minute, kib in samples if minute >= warm_minute), samples[-1][1])
    end, peak = samples[-1][1], max(kib for _, kib in samples)
    growth = end / warm - 1
    lines = [f"requests: {tally.answered:,} answered, {tally.failed:,} failed; config changes: "
             f"{tally.config_changes}",
             f"RSS: {warm / 1024:,.0f} MiB at minute {warm_minute:g}, {end / 1024:,.0f} MiB at the end "
             f"({growth:+.1%}), peak {peak / 1024:,.0f} MiB",
             *[f"  failure: {error}" for error in tally.errors[:5]]]
    return tally.failed == 0 and growth <= max_growth, lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m labtools soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", default="build/models", help="exported by notebook 03 (default: %(default)s)")
    parser.add_argument("--minutes", type=float, default=60, help="how long (default: %(default)s)")
    parser.add_argument("--churn-seconds", type=float, default=6, help="one config change this often "
                        "(default: %(default)s)")
    parser.add_argument("--warm-minute", type=float, default=6, help="the RSS the end is compared with "
                        "(default: minute %(default)s)")
    parser.add_argument("--max-growth", type=float, default=0.05, help="most RSS growth that passes "
                        "(default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        passed, lines = soak(project_path(args.models_dir), args.minutes, args.churn_seconds, args.warm_minute,
                             args.max_growth)
    except LabError as error:
        print(f"error: {error}")
        return 2
    print("\n".join(lines))
    print("soak: passed" if passed else "soak: FAILED")
    return 0 if passed else 1
