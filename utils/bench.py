"""`make bench`: how close the served model gets to the model run in-process.

Runs the offline catalog's first model three ways at batch size 1 and prints p50
latencies, then, as its last line, one JSON object of ratios measured in this run:

- grpc_overhead: gRPC Predict `serving_default` / the same signature in this process
- rest_b64_overhead: REST `serving_preprocess` with one b64 JPEG / the same in this process
- rest_float_overhead: REST `serving_default` with one float image as JSON / in this process

"In this process" uses the server's own loader (TF1 session, SavedModelBundle): the floor no
server can beat. Requests are interleaved round by round, so a noisy neighbour slows all
paths alike; request bodies are built once, as a load generator would.

    python -m utils.bench [--requests 100]
"""

import argparse
import base64
import json
import statistics
import time

import grpc
import numpy as np
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tqdm import tqdm

from model_server.bundle import SavedModelBundle
from utils.catalog import catalog_models, load_model
from utils.images import IMAGES_DIR, load_batch, read_image_bytes
from utils.labels import load_labels
from utils.paths import BUILD_DIR
from utils.server import LocalModelServer, free_port, wait_until_available
from utils.serving import ServingModule, export_servable

BENCH_DIR = BUILD_DIR / "bench"
BENCH_IMAGE = IMAGES_DIR / "chelsea.jpg"


def exported_offline_model():
    """(model name, version, export dir) of the offline catalog's first model, exported once."""
    model = catalog_models("offline")[0]
    export_dir = BENCH_DIR / "models" / model.model_name / str(model.version)
    if not (export_dir / "saved_model.pb").exists():
        export_servable(ServingModule(load_model(model), load_labels()), BENCH_DIR / "models", model.model_name,
                        model.version)
    return model.model_name, model.version, export_dir


def p50_ms(seconds):
    return statistics.median(seconds) * 1000


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100, help="timed requests per path (at least 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests per path first")
    args = parser.parse_args(argv)
    if args.requests < 50:
        parser.error("--requests must be at least 50")

    model_name, version, export_dir = exported_offline_model()
    image = load_batch([BENCH_IMAGE]).numpy()
    jpeg = read_image_bytes(BENCH_IMAGE)
    bundle = SavedModelBundle(export_dir)
    raw = np.array([jpeg], dtype=object)

    config = BENCH_DIR / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "{model_name}" base_path: "{export_dir.parent}" '
                         f'model_platform: "tensorflow" model_version_policy {{ specific {{ versions: {version} }} }} }} }}')
    grpc_port, rest_port = free_port(), free_port()
    server = LocalModelServer([f"--port={grpc_port}", f"--rest_api_port={rest_port}", f"--model_config_file={config}"],
                              log_path=BENCH_DIR / "model_server.log").start()
    rest_url = f"http://127.0.0.1:{rest_port}"
    try:
        wait_until_available(rest_url, model_name, [version], timeout=120, process=server.process)
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        grpc_request = predict_pb2.PredictRequest()
        grpc_request.model_spec.name = model_name
        grpc_request.inputs["x"].CopyFrom(tf.make_tensor_proto(image))
        session = requests.Session()
        predict_url = f"{rest_url}/v1/models/{model_name}:predict"
        b64_body = json.dumps({"signature_name": "serving_preprocess",
                               "instances": [{"b64": base64.b64encode(jpeg).decode()}]}).encode()
        float_body = json.dumps({"instances": image.tolist()}).encode()

        def rest_call(body):
            response = session.post(predict_url, data=body, headers={"Content-Type": "application/json"})
            if response.status_code != 200:
                raise RuntimeError(f"REST request failed: {response.status_code} {response.text[:200]}")

        paths = {
            "in_process_default": lambda: bundle.run("serving_default", {"x": image}),
            "in_process_preprocess": lambda: bundle.run("serving_preprocess", {"raw_images": raw}),
            "grpc_default": lambda: stub.Predict(grpc_request, timeout=30),
            "rest_b64_preprocess": lambda: rest_call(b64_body),
            "rest_float_default": lambda: rest_call(float_body),
        }
        timings = {name: [] for name in paths}
        for _ in range(args.warmup):
            for call in paths.values():
                call()
        for _ in tqdm(range(args.requests), desc="rounds", unit="round"):
            for name, call in paths.items():
                started = time.perf_counter()
                call()
                timings[name].append(time.perf_counter() - started)
        channel.close()
    finally:
        server.stop()
        bundle.close()

    p50 = {name: p50_ms(values) for name, values in timings.items()}
    print(f"model {model_name} version {version}, batch size 1, {args.requests} requests per path, p50:")
    for name, value in p50.items():
        print(f"  {name:24} {value:8.2f} ms")
    print(f"  REST float body {len(float_body):,} bytes; b64 body {len(b64_body):,} bytes")
    ratios = {
        "grpc_overhead": round(p50["grpc_default"] / p50["in_process_default"], 3),
        "rest_b64_overhead": round(p50["rest_b64_preprocess"] / p50["in_process_preprocess"], 3),
        "rest_float_overhead": round(p50["rest_float_default"] / p50["in_process_default"], 3),
    }
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
