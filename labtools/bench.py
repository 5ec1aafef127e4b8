"""`python -m labtools bench` (`make bench`): how close the served model gets to the model run in-process,
to a bare server on the same libraries, and to a peer server.

Prints the figures, then, as its last line, one JSON object of ratios, each the median over
`--repeats` runs (3 by default) so one noisy run cannot decide; numerator and denominator of a
ratio always come from the same run.

On the offline catalog's first model:
- grpc_overhead: gRPC Predict `serving_default` / the same signature in this process (p50, batch 1)
- rest_b64_overhead: REST `serving_preprocess`, one b64 JPEG / the same in this process (p50)
- rest_float_overhead: REST `serving_default`, one float image as JSON / in this process (p50)
- batch_throughput_ratio: throughput with batching at 32 concurrent gRPC clients / in-process
  batch-32 throughput
- warm_first_request_ratio: first request after a start with warmup records / steady p50

Floors, on TF Serving's `half_plus_two` with a 150,528-float input (one image's worth, 602 KB), so
TensorFlow's share is negligible; the denominator is a bare server on the same library answering
the same request with a canned copy of model_server's own response:
- grpc_floor_ratio: p50 through model_server / p50 of a bare grpcio PredictionService servicer
- rest_floor_ratio: the same over REST / a bare aiohttp handler
- grpc_floor_throughput_ratio, rest_floor_throughput_ratio: throughput at 16 concurrent clients,
  model_server / the bare server

Peer, KServe's Python ModelServer (V1 protocol, REST) running the same signature through the same
SavedModelBundle, from the bench-only venv `make bench` creates (build/bench-venv):
- peer_rest_b64_ratio: our REST b64 p50 / KServe's
- peer_throughput_ratio: our REST b64 throughput at 16 clients / KServe's

"In this process" uses the server's own loader (TF1 session, SavedModelBundle): the floor no
server can beat. Batch-1 requests are interleaved round by round, so a noisy neighbour slows
all paths alike; request bodies are built once, as a load generator would.

    python -m labtools bench [--requests 100] [--repeats 3]
"""

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import time

import grpc
import numpy as np
import requests
from tqdm import tqdm

from model_server.bundle import SavedModelBundle
from model_server.protos import BatchingParameters
from utils.catalog import catalog_models, load_model
from utils.deploy import models_config, write_config
from utils.images import IMAGES_DIR, get_image_list, load_batch, read_image_bytes
from utils.labels import load_labels
from utils.loadgen import GrpcPredictor, RestPredictor, p50_ms, run_load
from utils.paths import BUILD_DIR, PROJECT_ROOT
from utils.processes import ManagedProcess
from utils.server import LocalModelServer, free_port, wait_until_available
from utils.serving import ServingModule, export_servable
from utils.warmup import lab_warmup_requests, write_warmup_requests

BENCH_DIR = BUILD_DIR / "bench"
BENCH_IMAGE = IMAGES_DIR / "chelsea.jpg"
BATCH_SIZE = 32
HALF_PLUS_TWO = "half_plus_two"
HALF_PLUS_TWO_DIR = PROJECT_ROOT.parent / "shared" / "fixtures" / "tfserving-testdata" / "saved_model_half_plus_two_cpu"
FLOOR_ELEMENTS = 224 * 224 * 3  # one image's worth of floats
CONCURRENT_CLIENTS = 16
PEER_PYTHON = BUILD_DIR / "bench-venv" / "bin" / "python"
PEER_MODEL = "peer"
READY_TIMEOUT = 180
# The ratios `make bench` reported first, in their order; the floors' and the peer's follow.
FIRST_RATIOS = ["grpc_overhead", "rest_b64_overhead", "rest_float_overhead", "batch_throughput_ratio",
                "warm_first_request_ratio"]


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
    """model_server serving the offline model and half_plus_two; (server, gRPC target, REST URL)."""
    config = models_config(model_name, export_dir.parent, [version])
    floor_model = config.model_config_list.config.add()
    floor_model.name, floor_model.base_path, floor_model.model_platform = HALF_PLUS_TWO, str(HALF_PLUS_TWO_DIR), "tensorflow"
    config_path = BENCH_DIR / "models.config"
    write_config(config, config_path)
    grpc_port, rest_port = free_port(), free_port()
    server = LocalModelServer([f"--port={grpc_port}", f"--rest_api_port={rest_port}",
                               f"--model_config_file={config_path}", *flags],
                              log_path=BENCH_DIR / "model_server.log").start()
    rest_url = f"http://127.0.0.1:{rest_port}"
    wait_until_available(rest_url, model_name, [version], timeout=READY_TIMEOUT, process=server.process)
    wait_until_available(rest_url, HALF_PLUS_TWO, [123], timeout=READY_TIMEOUT, process=server.process)
    return server, f"127.0.0.1:{grpc_port}", rest_url


# --- the floors: bare servers on the same libraries, answering a canned response ---------------

def serve_grpc_floor(port, response_path):
    """A bare grpcio PredictionService: every Predict answers the PredictResponse in `response_path`."""
    from concurrent.futures import ThreadPoolExecutor

    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from model_server.grpc_api import server_options

    class CannedPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def __init__(self, response):
            self.response = response

        def Predict(self, request, context):
            return self.response

    response = predict_pb2.PredictResponse.FromString(open(response_path, "rb").read())
    server = grpc.server(ThreadPoolExecutor(64), options=server_options())
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(CannedPredictionService(response), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def serve_rest_floor(port, body_path):
    """A bare aiohttp server: every request's body is read, then answered with the bytes in `body_path`."""
    from aiohttp import web

    body = open(body_path, "rb").read()

    async def canned(request):
        await request.read()
        return web.Response(body=body, headers={"Content-Type": "application/json"})

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", canned)
    web.run_app(app, host="127.0.0.1", port=int(port), access_log=None, print=None)


def serve_kserve_peer(port, export_dir):
    """KServe's ModelServer (V1 REST) running `serving_preprocess` on b64 JPEGs through SavedModelBundle."""
    import kserve

    class BundleModel(kserve.Model):
        def __init__(self, name):
            super().__init__(name)
            self.bundle = SavedModelBundle(export_dir)
            self.ready = True

        async def predict(self, payload, headers=None):
            raw = np.array([base64.b64decode(item["b64"]) for item in payload["instances"]], dtype=object)
            outputs = await asyncio.to_thread(self.bundle.run, "serving_preprocess", {"raw_images": raw})
            columns = {name: (np.char.decode(value.astype(bytes)) if value.dtype == object else value).tolist()
                       for name, value in outputs.items()}
            return {"predictions": [dict(zip(columns, row)) for row in zip(*columns.values())]}

    kserve.ModelServer(http_port=int(port), grpc_port=free_port(), enable_grpc=False, workers=1,
                       enable_latency_logging=False).start([BundleModel(PEER_MODEL)])


BACKGROUND_SERVERS = {"floor-grpc": serve_grpc_floor, "floor-rest": serve_rest_floor, "peer-kserve": serve_kserve_peer}


def start_background(kind, python, *arguments):
    """One of BACKGROUND_SERVERS in its own process on a free port; (process, port)."""
    port = free_port()
    process = ManagedProcess([python, "-m", "labtools.bench", kind, port, *arguments], f"bench {kind}",
                             {kind: port}, BENCH_DIR / f"{kind}.log",
                             env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"})
    return process.start(), port


def wait_for_http(url, process, timeout=READY_TIMEOUT):
    """Until GET `url` answers 200; fails if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.exited() is not None:
            raise SystemExit(f"{process.kind} exited with code {process.exited()}: see {process.log_path}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass  # not listening yet
        time.sleep(0.2)
    raise SystemExit(f"{process.kind} did not answer {url} within {timeout} s")


class RawGrpcPredictor(GrpcPredictor):
    """GrpcPredictor with the response's bytes kept, to serve as a floor's canned response."""

    def response_bytes(self):
        return self.stub.Predict(self.request, timeout=60).SerializeToString()


# --- measurements --------------------------------------------------------------------------

def timed_rounds(paths, rounds, warmup):
    """{name: [seconds]} calling every path once per round, in turn."""
    for _ in range(warmup):
        for call in paths.values():
            call()
    timings = {name: [] for name in paths}
    for _ in tqdm(range(rounds), desc="batch-1 rounds", unit="round", leave=False):
        for name, call in paths.items():
            started = time.perf_counter()
            call()
            timings[name].append(time.perf_counter() - started)
    return timings


def throughputs(paths, requests_per_path):
    """{name: requests/s} at CONCURRENT_CLIENTS clients, one path after another (each after a warm-up)."""
    result = {}
    for name, call in paths.items():
        run_load(call, CONCURRENT_CLIENTS, concurrency=CONCURRENT_CLIENTS)
        load = run_load(call, requests_per_path, concurrency=CONCURRENT_CLIENTS, description=f"{name} load")
        if load.failures:
            raise SystemExit(f"{load.failures} {name} requests failed: {load.errors[:3]}")
        result[name] = load.throughput
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m labtools bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100, help="timed batch-1 requests per path (at least 50)")
    parser.add_argument("--batch-rounds", type=int, default=20, help="batches of 32 for the throughput figures")
    parser.add_argument("--load-requests", type=int, default=160,
                        help=f"requests per path at {CONCURRENT_CLIENTS} concurrent clients")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every ratio; the median is reported")
    parser.add_argument("--warmup-iterations", type=int, default=1,
                        help="--num_request_iterations_for_warmup of the server (TF Serving's default: 1)")
    args = parser.parse_args(argv)
    if args.requests < 50:
        parser.error("--requests must be at least 50")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    model_name, version, export_dir = exported_offline_model()
    image = load_batch([BENCH_IMAGE]).numpy()
    batch = np.repeat(image, BATCH_SIZE, axis=0)
    jpeg = read_image_bytes(BENCH_IMAGE)
    raw = np.array([jpeg], dtype=object)
    b64_body = {"signature_name": "serving_preprocess", "instances": [{"b64": base64.b64encode(jpeg).decode()}]}
    floor_input = image.reshape(FLOOR_ELEMENTS, 1)
    floor_body = json.dumps({"instances": floor_input.tolist()}).encode()
    bundle = SavedModelBundle(export_dir)

    background = []
    try:
        runs = [measure_run(args, model_name, version, export_dir, bundle, image, raw, b64_body, floor_input,
                            floor_body, background, repeat) for repeat in range(args.repeats)]
    finally:
        for process, _ in background:
            process.stop()
    batch_runs = measure_batching(args, model_name, version, export_dir, bundle, image, batch)
    bundle.close()

    for repeat, (figures, ratios) in enumerate(runs):
        figures.update(batch_runs[repeat][0])
        ratios.update(batch_runs[repeat][1])
        print(f"run {repeat + 1} of {args.repeats}:")
        for line in figures.values():
            print(f"  {line}")
        print(f"  ratios: {json.dumps(ratios)}")
    keys = sorted(runs[0][1], key=lambda key: (key not in FIRST_RATIOS, FIRST_RATIOS.index(key) if key in FIRST_RATIOS else 0))
    medians = {key: round(statistics.median(run[1][key] for run in runs), 3) for key in keys}
    print(f"REST float body {len(json.dumps({'instances': image.tolist()})):,} bytes; b64 body "
          f"{len(json.dumps(b64_body)):,} bytes; floor bodies: REST {len(floor_body):,} bytes")
    print(f"medians of {args.repeats} runs:")
    print(json.dumps(medians))


def measure_run(args, model_name, version, export_dir, bundle, image, raw, b64_body, floor_input, floor_body,
                background, repeat):
    """One run of the batch-1, floor and peer figures: ({name: printed line}, {ratio: value})."""
    server, grpc_target, rest_url = start_server(model_name, version, export_dir,
                                                 f"--num_request_iterations_for_warmup={args.warmup_iterations}")
    clients = []
    try:
        grpc_default = GrpcPredictor(grpc_target, model_name, "serving_default", {"x": image}).connect()
        started = time.perf_counter()
        grpc_default()
        first_request = time.perf_counter() - started
        predict_url = f"{rest_url}/v1/models/{model_name}:predict"
        floor_url = f"{rest_url}/v1/models/{HALF_PLUS_TWO}:predict"
        grpc_floor_ours = RawGrpcPredictor(grpc_target, HALF_PLUS_TWO, "serving_default", {"x": floor_input}).connect()
        clients += [grpc_default, grpc_floor_ours]
        if not background:
            start_floors_and_peer(grpc_floor_ours, RestPredictor(floor_url, floor_body), export_dir, background)
        (grpc_floor, grpc_floor_port), (_, rest_floor_port) = background[:2]
        paths = {
            "in_process_default": lambda: bundle.run("serving_default", {"x": image}),
            "in_process_preprocess": lambda: bundle.run("serving_preprocess", {"raw_images": raw}),
            "grpc_default": grpc_default,
            "rest_b64_preprocess": RestPredictor(predict_url, b64_body),
            "rest_float_default": RestPredictor(predict_url, {"instances": image.tolist()}),
            "grpc_half_plus_two": grpc_floor_ours,
            "grpc_bare_floor": GrpcPredictor(f"127.0.0.1:{grpc_floor_port}", HALF_PLUS_TWO, "serving_default",
                                             {"x": floor_input}).connect(),
            "rest_half_plus_two": RestPredictor(floor_url, floor_body),
            "rest_bare_floor": RestPredictor(f"http://127.0.0.1:{rest_floor_port}/v1/models/{HALF_PLUS_TWO}:predict",
                                             floor_body),
        }
        if len(background) > 2:
            paths["kserve_rest_b64"] = RestPredictor(f"http://127.0.0.1:{background[2][1]}/v1/models/{PEER_MODEL}:predict",
                                                     b64_body)
        clients += [call for call in paths.values() if hasattr(call, "close")]
        timings = timed_rounds(paths, args.requests, warmup=10)
        loads = throughputs({name: paths[name] for name in ("grpc_half_plus_two", "grpc_bare_floor",
                                                            "rest_half_plus_two", "rest_bare_floor",
                                                            "rest_b64_preprocess", "kserve_rest_b64") if name in paths},
                            args.load_requests)
    finally:
        for client in clients:
            client.close()
        server.stop()
    p50 = {name: p50_ms(values) for name, values in timings.items()}
    figures = {name: f"{name:24} p50 {value:8.2f} ms" for name, value in p50.items()}
    figures.update({f"{name} load": f"{name:24} {value:8.1f} requests/s at {CONCURRENT_CLIENTS} clients"
                    for name, value in loads.items()})
    figures["first"] = f"first request after warmup {first_request * 1000:.2f} ms"
    ratios = {
        "grpc_overhead": p50["grpc_default"] / p50["in_process_default"],
        "rest_b64_overhead": p50["rest_b64_preprocess"] / p50["in_process_preprocess"],
        "rest_float_overhead": p50["rest_float_default"] / p50["in_process_default"],
        "warm_first_request_ratio": first_request * 1000 / p50["grpc_default"],
        "grpc_floor_ratio": p50["grpc_half_plus_two"] / p50["grpc_bare_floor"],
        "rest_floor_ratio": p50["rest_half_plus_two"] / p50["rest_bare_floor"],
        "grpc_floor_throughput_ratio": loads["grpc_half_plus_two"] / loads["grpc_bare_floor"],
        "rest_floor_throughput_ratio": loads["rest_half_plus_two"] / loads["rest_bare_floor"],
    }
    if "kserve_rest_b64" in p50:
        ratios["peer_rest_b64_ratio"] = p50["rest_b64_preprocess"] / p50["kserve_rest_b64"]
        ratios["peer_throughput_ratio"] = loads["rest_b64_preprocess"] / loads["kserve_rest_b64"]
    return figures, {key: round(value, 3) for key, value in ratios.items()}


def start_floors_and_peer(grpc_client, rest_client, export_dir, background):
    """The bare gRPC and REST floors, canned with model_server's answers, and the KServe peer if installed."""
    grpc_response, rest_response = BENCH_DIR / "floor-response.pb", BENCH_DIR / "floor-response.json"
    grpc_response.write_bytes(grpc_client.response_bytes())
    rest_response.write_bytes(rest_client().content)
    rest_client.close()
    process, port = start_background("floor-grpc", sys.executable, grpc_response)
    background.append((process, port))
    grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{port}")).result(timeout=READY_TIMEOUT)
    process, port = start_background("floor-rest", sys.executable, rest_response)
    background.append((process, port))
    wait_for_http(f"http://127.0.0.1:{port}/", process)
    if not PEER_PYTHON.exists():
        print(f"No KServe peer: {PEER_PYTHON} is missing (make bench creates it).")
        return
    process, port = start_background("peer-kserve", PEER_PYTHON, export_dir)
    background.append((process, port))
    wait_for_http(f"http://127.0.0.1:{port}/v1/models/{PEER_MODEL}", process)


def measure_batching(args, model_name, version, export_dir, bundle, image, batch):
    """Per repeat: in-process batch-32 throughput, then the server batching 32 concurrent batch-1 clients."""
    batching = BatchingParameters()
    batching.max_batch_size.value = BATCH_SIZE
    batching.batch_timeout_micros.value = 20000
    batching.num_batch_threads.value = 2
    batching.max_enqueued_batches.value = 1000
    batching_path = BENCH_DIR / "batching.config"
    write_config(batching, batching_path)
    server, grpc_target, _ = start_server(model_name, version, export_dir, "--enable_batching",
                                          f"--batching_parameters_file={batching_path}")
    runs = []
    try:
        client = GrpcPredictor(grpc_target, model_name, "serving_default", {"x": image})
        run_load(client, BATCH_SIZE * 3, concurrency=BATCH_SIZE)
        for _ in range(args.repeats):
            for _ in range(3):
                bundle.run("serving_default", {"x": batch})
            started = time.perf_counter()
            for _ in range(args.batch_rounds):
                bundle.run("serving_default", {"x": batch})
            in_process = BATCH_SIZE * args.batch_rounds / (time.perf_counter() - started)
            served = run_load(client, BATCH_SIZE * args.batch_rounds, concurrency=BATCH_SIZE,
                              description="batched load")
            if served.failures:
                raise SystemExit(f"{served.failures} batched requests failed: {served.errors[:3]}")
            runs.append(({"batch": f"batch {BATCH_SIZE}: in-process {in_process:.1f} images/s; served with "
                                   f"batching, {BATCH_SIZE} gRPC clients: {served.throughput:.1f} requests/s"},
                         {"batch_throughput_ratio": round(served.throughput / in_process, 3)}))
        client.close()
    finally:
        server.stop()
    return runs


if __name__ == "__main__":
    kind, port, *arguments = sys.argv[1:]
    BACKGROUND_SERVERS[kind](port, *arguments)
