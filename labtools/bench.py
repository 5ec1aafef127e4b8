"""`python -m labtools bench` (`make bench`): how close the served model gets to the model run in-process.

On the offline catalog's first model, prints the figures, then, as its last line, one
JSON object of ratios measured in this run:

- grpc_overhead: gRPC Predict `serving_default` / the same signature in this process (p50, batch 1)
- rest_b64_overhead: REST `serving_preprocess`, one b64 JPEG / the same in this process (p50)
- rest_float_overhead: REST `serving_default`, one float image as JSON / in this process (p50)
- batch_throughput_ratio: throughput with batching at 32 concurrent gRPC clients / in-process
  batch-32 throughput
- warm_first_request_ratio: first request after a start with warmup records / steady p50

"In this process" uses the server's own loader (TF1 session, SavedModelBundle): the floor no
server can beat. Batch-1 requests are interleaved round by round, so a noisy neighbour slows
all paths alike; request bodies are built once, as a load generator would.

    python -m labtools bench [--requests 100]
"""

import argparse
import base64
import json
import time

import numpy as np
from tqdm import tqdm

from model_server.bundle import SavedModelBundle
from model_server.protos import BatchingParameters
from utils.catalog import catalog_models, load_model
from utils.deploy import models_config, write_config
from utils.images import IMAGES_DIR, get_image_list, load_batch, read_image_bytes
from utils.labels import load_labels
from utils.loadgen import GrpcPredictor, RestPredictor, p50_ms, run_load
from utils.paths import BUILD_DIR
from utils.server import LocalModelServer, free_port, wait_until_available
from utils.serving import ServingModule, export_servable
from utils.warmup import lab_warmup_requests, write_warmup_requests

BENCH_DIR = BUILD_DIR / "bench"
BENCH_IMAGE = IMAGES_DIR / "chelsea.jpg"
BATCH_SIZE = 32


def exported_offline_model():
    """(model name, version, export dir) of the offline catalog's first model, with warmup records."""
    model = catalog_models("offline")[0]
    export_dir = BENCH_DIR / "models" / model.model_name / str(model.version)
    if not (export_dir / "saved_model.pb").exists():
        export_servable(ServingModule(load_model(model), load_labels()), BENCH_DIR / "models", model.model_name,
                        model.version)
        write_warmup_requests(export_dir, lab_warmup_requests(model.model_name, get_image_list()))
    return model.model_name, model.version, export_dir


def start_server(model_name, version, export_dir, *flags):
    config = BENCH_DIR / "models.config"
    write_config(models_config(model_name, export_dir.parent, [version]), config)
    grpc_port, rest_port = free_port(), free_port()
    server = LocalModelServer([f"--port={grpc_port}", f"--rest_api_port={rest_port}", f"--model_config_file={config}",
                               *flags], log_path=BENCH_DIR / "model_server.log").start()
    rest_url = f"http://127.0.0.1:{rest_port}"
    wait_until_available(rest_url, model_name, [version], timeout=180, process=server.process)
    return server, f"127.0.0.1:{grpc_port}", rest_url


def timed_rounds(paths, rounds, warmup):
    """{name: [seconds]} calling every path once per round, in turn."""
    for _ in range(warmup):
        for call in paths.values():
            call()
    timings = {name: [] for name in paths}
    for _ in tqdm(range(rounds), desc="batch-1 rounds", unit="round"):
        for name, call in paths.items():
            started = time.perf_counter()
            call()
            timings[name].append(time.perf_counter() - started)
    return timings


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m labtools bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100, help="timed batch-1 requests per path (at least 50)")
    parser.add_argument("--batch-rounds", type=int, default=20, help="batches of 32 for the throughput figures")
    parser.add_argument("--warmup-iterations", type=int, default=1,
                        help="--num_request_iterations_for_warmup of the server (TF Serving's default: 1)")
    args = parser.parse_args(argv)
    if args.requests < 50:
        parser.error("--requests must be at least 50")

    model_name, version, export_dir = exported_offline_model()
    image = load_batch([BENCH_IMAGE]).numpy()
    batch = np.repeat(image, BATCH_SIZE, axis=0)
    jpeg = read_image_bytes(BENCH_IMAGE)
    bundle = SavedModelBundle(export_dir)
    raw = np.array([jpeg], dtype=object)
    b64_body = {"signature_name": "serving_preprocess", "instances": [{"b64": base64.b64encode(jpeg).decode()}]}

    # 1. Batch-1 overheads and warm first request, on a plain server started with warmup records.
    server, grpc_target, rest_url = start_server(model_name, version, export_dir,
                                                 f"--num_request_iterations_for_warmup={args.warmup_iterations}")
    try:
        grpc_default = GrpcPredictor(grpc_target, model_name, "serving_default", {"x": image}).connect()
        started = time.perf_counter()
        grpc_default()
        first_request = time.perf_counter() - started
        predict_url = f"{rest_url}/v1/models/{model_name}:predict"
        rest_b64, rest_float = RestPredictor(predict_url, b64_body), RestPredictor(predict_url, {"instances": image.tolist()})
        timings = timed_rounds({
            "in_process_default": lambda: bundle.run("serving_default", {"x": image}),
            "in_process_preprocess": lambda: bundle.run("serving_preprocess", {"raw_images": raw}),
            "grpc_default": grpc_default,
            "rest_b64_preprocess": rest_b64,
            "rest_float_default": rest_float,
        }, args.requests, warmup=10)
        for client in (grpc_default, rest_b64, rest_float):
            client.close()
    finally:
        server.stop()
    warmup_log = [line for line in server.log().splitlines() if "Finished reading warmup data" in line]

    # 2. Batch-32 throughput: in-process, then the server batching 32 concurrent batch-1 clients.
    for _ in range(3):
        bundle.run("serving_default", {"x": batch})
    started = time.perf_counter()
    for _ in range(args.batch_rounds):
        bundle.run("serving_default", {"x": batch})
    in_process_throughput = BATCH_SIZE * args.batch_rounds / (time.perf_counter() - started)
    bundle.close()
    batching = BatchingParameters()
    batching.max_batch_size.value = BATCH_SIZE
    batching.batch_timeout_micros.value = 20000
    batching.num_batch_threads.value = 2
    batching.max_enqueued_batches.value = 1000
    batching_path = BENCH_DIR / "batching.config"
    write_config(batching, batching_path)
    server, grpc_target, _ = start_server(model_name, version, export_dir, "--enable_batching",
                                          f"--batching_parameters_file={batching_path}")
    try:
        client = GrpcPredictor(grpc_target, model_name, "serving_default", {"x": image})
        run_load(client, BATCH_SIZE * 3, concurrency=BATCH_SIZE)
        served = run_load(client, BATCH_SIZE * args.batch_rounds, concurrency=BATCH_SIZE, description="batched load")
        client.close()
    finally:
        server.stop()
    if served.failures:
        raise SystemExit(f"{served.failures} batched requests failed: {served.errors[:3]}")

    p50 = {name: p50_ms(values) for name, values in timings.items()}
    print(f"model {model_name} version {version}; batch-1 p50 over {args.requests} interleaved requests per path:")
    for name, value in p50.items():
        print(f"  {name:24} {value:8.2f} ms")
    print(f"  REST float body {len(json.dumps({'instances': image.tolist()})):,} bytes; "
          f"b64 body {len(json.dumps(b64_body)):,} bytes")
    print(f"first request after warmup {first_request * 1000:.2f} ms ({warmup_log[0].split('] ')[-1] if warmup_log else 'no warmup log'})")
    print(f"batch {BATCH_SIZE}: in-process {in_process_throughput:.1f} images/s; served with batching, "
          f"{BATCH_SIZE} gRPC clients: {served.throughput:.1f} requests/s over {served.sent} requests")
    ratios = {
        "grpc_overhead": round(p50["grpc_default"] / p50["in_process_default"], 3),
        "rest_b64_overhead": round(p50["rest_b64_preprocess"] / p50["in_process_preprocess"], 3),
        "rest_float_overhead": round(p50["rest_float_default"] / p50["in_process_default"], 3),
        "batch_throughput_ratio": round(served.throughput / in_process_throughput, 3),
        "warm_first_request_ratio": round(first_request * 1000 / p50["grpc_default"], 3),
    }
    print(json.dumps(ratios))
