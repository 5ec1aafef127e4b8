"""`python -m labtools bench` (`make bench`): how close the served model gets to the model run in-process,
to a bare server on the same libraries, and to a peer server.

Prints the figures, then, as its last line, one JSON object of ratios, each the median over
`--repeats` runs (3 by default) so one noisy run cannot decide; numerator and denominator of a
ratio always come from the same run.

On the offline catalog's first model:
- grpc_overhead: gRPC Predict `serving_default` / the same signature in this process (p50, batch 1)
- rest_b64_overhead: REST `serving_preprocess`, one b64 JPEG / the same in this process (p50)
- rest_float_overhead: REST `serving_default`, one float image as JSON / in this process (p50)
- batch_throughput_ratio: throughput with batching (one batch thread per core, batches of up to 32, no
  timeout: TF Serving's starting point on CPUs) at 32 concurrent gRPC clients / in-process batch-32
  throughput, from as many threads as the server has batch threads
- batch_throughput_limit: the highest batch_throughput_ratio any server could reach with these clients on this
  machine (`best_throughput`): the clients run on the server's cores, and every CPU second they spend is one
  the model does not get
- batch_throughput_library_limit: the same for a server on grpcio: the CPU a bare grpcio server spends answering
  the same 32 clients' requests (with model_server's batch-1 answer, canned) is added to the model's
- warm_first_request_ratio: first request after a start with warmup records / steady p50

Floors, on TF Serving's `half_plus_two` (built into build/testdata/ by labtools.testdata) with a
150,528-float input (one image's worth, 602 KB), so TensorFlow's share is negligible; the denominator
is a bare server on the same library answering the same request with a canned copy of model_server's
own response (the bare servers and the peer run in their own processes: labtools/bench_servers.py):
- grpc_floor_ratio: p50 through model_server / p50 of a bare grpcio PredictionService servicer
- rest_floor_ratio: the same over REST / a bare aiohttp handler
- grpc_floor_throughput_ratio, rest_floor_throughput_ratio: throughput at 16 concurrent clients,
  model_server / the bare server (the gRPC pair, several hundred requests a second, gets `--floor-requests`
  each, sent in alternated halves as the peer's are)
- rest_b64_limit: the lowest rest_b64_overhead any server could reach with this client on this machine:
  (in-process p50 + p50 of a bare aiohttp handler answering the same b64 request with model_server's
  response) / in-process p50

Peer, KServe's Python ModelServer (V1 protocol, REST) running the same signature through the same
SavedModelBundle, from the bench-only venv `make bench` creates (build/bench-venv):
- peer_rest_b64_ratio: our REST b64 p50 / KServe's (batch-1 rounds)
- peer_throughput_ratio_c1, _c4, _c16: our REST b64 throughput at 1, 4 and 16 clients / KServe's
- peer_p50_ratio_c4, _c16: our p50 / KServe's in those same loads (at most 1: no worse)
- peer_cpu_ratio_c16: CPU time our server spent per request at 16 clients / KServe's (processes and their
  children), the cost that decides throughput once the cores are busy; the in-process CPU per request
  (`serving_preprocess` from 16 threads, TensorFlow's work alone) is printed beside them
- peer_throughput_limit_c16: the highest peer_throughput_ratio_c16 any server could reach against this KServe
  with our clients beside it (`best_throughput`)
- peer_throughput_library_limit_c16: the same for a server on aiohttp: the bare aiohttp handler's CPU per b64
  request at 16 clients is added to the model's

The physical limit, at 16 clients:
- throughput_ratio_c16_grpc: gRPC `serving_default` throughput / the same signature called in this process
  from 16 threads
- throughput_ratio_c16_rest: REST b64 `serving_preprocess` throughput / the same, in this process
- throughput_ratio_c16: the lower of the two
- throughput_ratio_c16_grpc_limit, _rest_limit, throughput_ratio_c16_limit (the lower): the highest ratio any
  server could reach with these clients on this machine (`best_throughput`), from the CPU per request this
  process spends running the model in process and running the clients
- throughput_ratio_c16_grpc_library_limit, _rest_library_limit, throughput_ratio_c16_library_limit (the lower):
  the same for a server on the path's library, grpcio or aiohttp: the CPU per request of the bare server
  answering the same request (with model_server's answer, canned; `--floor-requests` of them at 16 clients,
  since a process's CPU is read in 10 ms ticks) is added to the model's. No server on that library spends less
  than its bare server does on receiving the request and sending the answer.

"In this process" uses the server's own loader (TF1 session, SavedModelBundle) with the servers' pool sizes:
the floor no server can beat. (TensorFlow sizes its CPU pools once per process, for its first device, so the
bench sizes them before anything runs on TensorFlow.) Both servers, ours and the peer, run their Sessions
with the pools `--intra-op-threads` and `--inter-op-threads` name (TF Serving's --tensorflow_intra_op_parallelism
and --tensorflow_inter_op_parallelism; 0: TensorFlow's choice, one thread per core). The default, one
intra-op thread, is what a serving process on few cores needs: its requests already run in parallel,
and an op split across the cores leaves TensorFlow's idle pool threads spinning against the threads
that read and write the requests. Batch-1 requests are interleaved round by round, so a noisy neighbour
slows all paths alike; request bodies are built once, as a load generator would. Each ratio is printed as
the median of the runs, then as its spread (lowest, highest).

    python -m labtools bench [--requests 100] [--floor-requests 1600] [--repeats 3] [--intra-op-threads 1]
                             [--inter-op-threads 0]
"""

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

import grpc
import numpy as np
import psutil
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tqdm import tqdm

from labtools.bench_servers import PEER_MODEL, BenchServer
# The in-process baseline is the server's own loader (TF1 session), so it comes from model_server itself.
from model_server.saved_model_bundle import SavedModelBundle
from model_server.contract import CHANNEL_OPTIONS, BatchingParameters
from utils.catalog import catalog_models, load_model
from utils.deploy import models_config, write_config
from utils.errors import LabError
from utils.images import IMAGES_DIR, get_image_list, load_batch, read_image_bytes
from utils.labels import load_labels
from utils.loadgen import GrpcPredictor, LoadResult, RestPredictor, p50_ms, run_load
from utils.paths import BUILD_DIR
from utils.payloads import PREPROCESS_SIGNATURE, b64_body, predict_request
from utils.runtime.model_server_process import LocalModelServer, wait_until_available
from utils.runtime.processes import free_port
from utils.serving import ServingModule, export_servable
from utils.warmup import lab_warmup_requests, write_warmup_requests

BENCH_DIR = BUILD_DIR / "bench"
BENCH_IMAGE = IMAGES_DIR / "chelsea.jpg"
BATCH_SIZE = 32
CORES = os.cpu_count() or 1
BATCH_THREADS = CORES  # TF Serving's batching guide on CPUs: one batch thread per core
HALF_PLUS_TWO, HALF_PLUS_TWO_VERSION = "half_plus_two", 123
FLOOR_ELEMENTS = 224 * 224 * 3  # one image's worth of floats
CONCURRENT_CLIENTS = 16
PEER_CLIENTS = (1, 4, CONCURRENT_CLIENTS)
PEER_PYTHON = BUILD_DIR / "bench-venv" / "bin" / "python"
READY_TIMEOUT = 180
# The ratios `make bench` reported first, in their order; the floors' and the peer's follow.
FIRST_RATIOS = ["grpc_overhead", "rest_b64_overhead", "rest_b64_limit", "rest_float_overhead",
                "batch_throughput_ratio", "batch_throughput_limit", "batch_throughput_library_limit",
                "warm_first_request_ratio", "throughput_ratio_c16", "throughput_ratio_c16_limit",
                "throughput_ratio_c16_library_limit"]


class ServedPath(NamedTuple):
    """A served path, the in-process path of the same signature and input, and the bare server on the same library
    answering the same request with model_server's answer, canned."""

    served: str
    in_process: str
    bare: str


# throughput_ratio_c16's paths, by protocol.
SERVED_PATHS = {"grpc": ServedPath("grpc_default", "in_process_default", "grpc_bare_model_floor"),
                "rest": ServedPath("rest_b64_preprocess", "in_process_preprocess", "rest_b64_bare_floor")}


@dataclass
class Background:
    """The bench's own servers (labtools.bench_servers), started by the first run with its answers canned."""

    grpc_floor: BenchServer | None = None
    grpc_model_floor: BenchServer | None = None
    rest_floor: BenchServer | None = None
    rest_b64_floor: BenchServer | None = None
    peer: BenchServer | None = None  # None without the bench venv

    def stop(self):
        for server in (self.grpc_floor, self.grpc_model_floor, self.rest_floor, self.rest_b64_floor, self.peer):
            if server is not None:
                server.stop()


@dataclass
class Bench:
    """What every run shares: the settings, the model and its in-process bundle (with the servers' pools), the
    inputs and request bodies (built once, as a load generator would), and the background servers."""

    args: argparse.Namespace
    model_name: str
    version: int
    export_dir: Path
    bundle: SavedModelBundle
    image: np.ndarray  # one preprocessed image, batch 1
    raw: np.ndarray  # the same image as JPEG bytes: serving_preprocess's input
    b64_body: dict  # the JPEG as a REST body for serving_preprocess
    floor_input: np.ndarray  # half_plus_two's input: the image's floats, one per row
    floor_body: bytes  # the same as a REST body
    background: Background = field(default_factory=Background)


def exported_offline_model():
    """(model name, version, export dir) of the offline catalog's first model, with warmup records."""
    model = catalog_models("offline")[0]
    export_dir = BENCH_DIR / "models" / model.model_name / str(model.version)
    if not (export_dir / "saved_model.pb").exists():
        export_servable(ServingModule(load_model(model), load_labels()), BENCH_DIR / "models", model.model_name,
                        model.version)
        write_warmup_requests(export_dir, lab_warmup_requests(model.model_name, get_image_list()))
    return model.model_name, model.version, export_dir


def pool_flags(args):
    """TF Serving's flags for the sizes of TensorFlow's pools the bench's servers run with."""
    return [f"--tensorflow_intra_op_parallelism={args.intra_op_threads}",
            f"--tensorflow_inter_op_parallelism={args.inter_op_threads}"]


@contextmanager
def running_server(bench, *flags):
    """model_server serving the offline model and half_plus_two; (gRPC target, REST URL, its process) while it
    runs."""
    from labtools.testdata import ensure_testdata

    config = models_config(bench.model_name, bench.export_dir.parent, [bench.version])
    floor_model = config.model_config_list.config.add()
    floor_model.name, floor_model.model_platform = HALF_PLUS_TWO, "tensorflow"
    floor_model.base_path = str(ensure_testdata() / "saved_model_half_plus_two_cpu")
    config_path = BENCH_DIR / "models.config"
    write_config(config, config_path)
    grpc_port, rest_port = free_port(), free_port()
    rest_url = f"http://127.0.0.1:{rest_port}"
    # Up to 32 clients wait in a batch at once, each on a gRPC thread: more than the default 4 per CPU.
    with LocalModelServer([f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--grpc_max_threads=64",
                           f"--model_config_file={config_path}", *pool_flags(bench.args), *flags],
                          log_path=BENCH_DIR / "model_server.log") as server:
        for model_name, version in ((bench.model_name, bench.version), (HALF_PLUS_TWO, HALF_PLUS_TWO_VERSION)):
            wait_until_available(rest_url, model_name, [version], timeout=READY_TIMEOUT, process=server.process)
        yield f"127.0.0.1:{grpc_port}", rest_url, psutil.Process(server.process.pid)


def canned_rest_floor(name, url, body):
    """A bare REST server answering every request with model_server's answer to `body` at `url`, started."""
    response = BENCH_DIR / f"{name}-response.json"
    with closing(RestPredictor(url, body)) as rest_client:
        response.write_bytes(rest_client().content)
    return BenchServer("floor-rest", sys.executable, [response], BENCH_DIR, name)


def canned_grpc_floor(name, target, request):
    """A bare gRPC server answering every Predict with model_server's answer to `request` at `target`."""
    response = BENCH_DIR / f"{name}-response.pb"
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    response.write_bytes(answer.SerializeToString())
    return BenchServer("floor-grpc", sys.executable, [response], BENCH_DIR, name)


def start_background(bench, grpc_target, floor_url, predict_url):
    """The bare gRPC and REST floors, canned with model_server's answers, and the KServe peer if installed."""
    background = bench.background
    # Each is named in `background` before it starts, so that Background.stop stops it if its start fails.
    background.grpc_floor = canned_grpc_floor("floor-grpc", grpc_target, predict_request(
        HALF_PLUS_TWO, "serving_default", {"x": bench.floor_input}))
    background.grpc_floor.start(READY_TIMEOUT)
    background.grpc_model_floor = canned_grpc_floor("floor-grpc-model", grpc_target, predict_request(
        bench.model_name, "serving_default", {"x": bench.image}))
    background.grpc_model_floor.start(READY_TIMEOUT)
    background.rest_floor = canned_rest_floor("floor-rest", floor_url, bench.floor_body)
    background.rest_floor.start(READY_TIMEOUT)
    background.rest_b64_floor = canned_rest_floor("floor-rest-b64", predict_url, bench.b64_body)
    background.rest_b64_floor.start(READY_TIMEOUT)
    if not PEER_PYTHON.exists():
        print(f"No KServe peer: {PEER_PYTHON} is missing (make bench creates it).")
        return
    background.peer = BenchServer("peer-kserve", PEER_PYTHON, [bench.export_dir, bench.args.intra_op_threads,
                                                               bench.args.inter_op_threads], BENCH_DIR)
    background.peer.start(READY_TIMEOUT)


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


@dataclass
class TimedLoad:
    """A path's timed load and the CPU seconds spent on it: by this process (`own_cpu`: the clients' work for a
    served path, the model's for an in-process one) and by the path's server and its children (`server_cpu`;
    None: not measured)."""

    load: LoadResult
    own_cpu: float
    server_cpu: float | None = None

    @property
    def own_ms(self):
        """This process's CPU per request, in milliseconds."""
        return self.own_cpu * 1000 / self.load.sent

    @property
    def server_ms(self):
        """The server's CPU per request, in milliseconds."""
        return self.server_cpu * 1000 / self.load.sent

    def __add__(self, other):
        """Two halves of one path's load as one."""
        load = LoadResult(latencies=self.load.latencies + other.load.latencies,
                          elapsed=self.load.elapsed + other.load.elapsed)
        server_cpu = None if self.server_cpu is None else self.server_cpu + other.server_cpu
        return TimedLoad(load, self.own_cpu + other.own_cpu, server_cpu)


def best_throughput(model_ms, client_ms):
    """The most requests a second any server answers on this machine with its clients beside it: none spends less
    CPU on a request than the model does in process (`model_ms`), its clients spend `client_ms` on the same cores,
    and the cores give at most their number of CPU seconds a second."""
    return CORES * 1000 / (model_ms + client_ms)


def timed_load(name, call, total, clients, server=None):
    """`total` requests of one path from `clients` threads as a TimedLoad (`server`: its psutil.Process); a
    failed request ends the bench."""
    own_started = time.process_time()  # this process's CPU, to the nanosecond (psutil counts 10 ms ticks)
    server_started = cpu_seconds(server) if server else 0.0
    load = run_load(call, total, concurrency=clients, description=f"{name} load, {clients} clients")
    own_cpu = time.process_time() - own_started
    server_cpu = cpu_seconds(server) - server_started if server else None
    if load.failures:
        raise SystemExit(f"{load.failures} {name} requests failed: {load.errors[:3]}")
    return TimedLoad(load, own_cpu, server_cpu)


def loads_at(paths, requests_per_path, clients=CONCURRENT_CLIENTS, processes=None):
    """{name: TimedLoad} at `clients` concurrent clients, one path after another, each after a warm-up;
    `processes` names a path's server (a psutil.Process) where its CPU time is wanted."""
    result = {}
    for name, call in paths.items():
        run_load(call, clients, concurrency=clients)
        result[name] = timed_load(name, call, requests_per_path, clients, (processes or {}).get(name))
    return result


def cpu_seconds(process):
    """CPU time (user and system) of a psutil.Process and its children so far."""
    total = 0.0
    for each in (process, *process.children(recursive=True)):
        times = each.cpu_times()
        total += times.user + times.system
    return total


def alternated_loads(calls, requests_per_path, clients, processes):
    """{name: TimedLoad} for the two paths in `calls` ({name: call}, ours first) at `clients` clients, each
    path's requests sent in two halves in the order ours, theirs, theirs, ours, so that neither gains from going
    first or last; `processes` are the servers' psutil.Processes by path name (a path without one has no server
    CPU figure)."""
    our_name, their_name = calls
    halves = {name: [] for name in calls}
    for name in (our_name, their_name, their_name, our_name):
        halves[name].append(loads_at({name: calls[name]}, requests_per_path // 2, clients, processes)[name])
    return {name: first + second for name, (first, second) in halves.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m labtools bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100, help="timed batch-1 requests per path (at least 50)")
    parser.add_argument("--batch-rounds", type=int, default=20, help="batches of 32 for the throughput figures")
    parser.add_argument("--load-requests", type=int, default=160,
                        help=f"requests per path at {CONCURRENT_CLIENTS} concurrent clients")
    parser.add_argument("--floor-requests", type=int, default=1600,
                        help=f"requests per gRPC floor path at {CONCURRENT_CLIENTS} clients, alternated in halves")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every ratio; the median is reported")
    parser.add_argument("--warmup-iterations", type=int, default=1,
                        help="--num_request_iterations_for_warmup of the server (TF Serving's default: 1)")
    parser.add_argument("--intra-op-threads", type=int, default=1,
                        help="--tensorflow_intra_op_parallelism of both servers (0: TensorFlow's choice)")
    parser.add_argument("--inter-op-threads", type=int, default=0,
                        help="--tensorflow_inter_op_parallelism of both servers (0: TensorFlow's choice)")
    args = parser.parse_args(argv)
    if args.requests < 50:
        parser.error("--requests must be at least 50")
    if args.floor_requests < 2 * CONCURRENT_CLIENTS:
        parser.error(f"--floor-requests must be at least {2 * CONCURRENT_CLIENTS} (two halves of {CONCURRENT_CLIENTS} "
                     "clients each)")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.intra_op_threads < 0 or args.inter_op_threads < 0:
        parser.error("--intra-op-threads and --inter-op-threads must be 0 (TensorFlow's choice) or more")

    # TensorFlow sizes its CPU pools once per process, when its first device is made (an eager op or a
    # Session): size them now, before the export or the images run an op, so the bundle runs as the servers do.
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    model_name, version, export_dir = exported_offline_model()
    image = load_batch([BENCH_IMAGE]).numpy()
    jpeg = read_image_bytes(BENCH_IMAGE)
    floor_input = image.reshape(FLOOR_ELEMENTS, 1)
    try:
        with closing(SavedModelBundle(export_dir, args.intra_op_threads, args.inter_op_threads)) as bundle:
            bench = Bench(args, model_name, version, export_dir, bundle, image, raw=np.array([jpeg], dtype=object),
                          b64_body=b64_body([jpeg], PREPROCESS_SIGNATURE), floor_input=floor_input,
                          floor_body=json.dumps({"instances": floor_input.tolist()}).encode())
            try:
                runs = [measure_run(bench) for _ in range(args.repeats)]
                batch_runs = measure_batching(bench)
            finally:
                bench.background.stop()
    except LabError as error:
        parser.exit(2, f"error: {error}\n")

    for repeat, ((figures, ratios), (batch_figures, batch_ratios)) in enumerate(zip(runs, batch_runs)):
        figures.update(batch_figures)
        ratios.update(batch_ratios)
        print(f"run {repeat + 1} of {args.repeats}:")
        for line in figures.values():
            print(f"  {line}")
        print(f"  ratios: {json.dumps(ratios)}")
    keys = sorted(runs[0][1], key=lambda key: (key not in FIRST_RATIOS,
                                               FIRST_RATIOS.index(key) if key in FIRST_RATIOS else 0))
    medians = {key: round(statistics.median(run[1][key] for run in runs), 3) for key in keys}
    spreads = {key: [min(run[1][key] for run in runs), max(run[1][key] for run in runs)] for key in keys}
    print(f"REST float body {len(json.dumps({'instances': image.tolist()})):,} bytes; b64 body "
          f"{len(json.dumps(bench.b64_body)):,} bytes; floor bodies: REST {len(bench.floor_body):,} bytes")
    print(f"servers' TensorFlow pools: {' '.join(pool_flags(args))}")
    print(f"spreads (lowest, highest) of {args.repeats} runs:")
    print(json.dumps(spreads))
    print(f"medians of {args.repeats} runs:")
    print(json.dumps(medians))


def measure_run(bench):
    """One run of the batch-1, floor and peer figures: ({name: printed line}, {ratio: value})."""
    image, raw, floor_input, floor_body = bench.image, bench.raw, bench.floor_input, bench.floor_body
    warmup_flag = f"--num_request_iterations_for_warmup={bench.args.warmup_iterations}"
    with running_server(bench, warmup_flag) as (grpc_target, rest_url, server_process), ExitStack() as clients:
        def client(predictor):
            return clients.enter_context(closing(predictor))

        grpc_default = client(GrpcPredictor(grpc_target, bench.model_name, "serving_default", {"x": image})).connect()
        started = time.perf_counter()
        grpc_default()
        first_request = time.perf_counter() - started
        predict_url = f"{rest_url}/v1/models/{bench.model_name}:predict"
        floor_url = f"{rest_url}/v1/models/{HALF_PLUS_TWO}:predict"
        grpc_floor_ours = client(GrpcPredictor(grpc_target, HALF_PLUS_TWO, "serving_default",
                                               {"x": floor_input})).connect()
        if bench.background.grpc_floor is None:
            start_background(bench, grpc_target, floor_url, predict_url)
        background = bench.background
        paths = {
            "in_process_default": partial(bench.bundle.run, "serving_default", {"x": image}),
            "in_process_preprocess": partial(bench.bundle.run, "serving_preprocess", {"raw_images": raw}),
            "grpc_default": grpc_default,
            "rest_b64_preprocess": client(RestPredictor(predict_url, bench.b64_body)),
            "rest_float_default": client(RestPredictor(predict_url, {"instances": image.tolist()})),
            "grpc_half_plus_two": grpc_floor_ours,
            "grpc_bare_floor": client(GrpcPredictor(background.grpc_floor.target, HALF_PLUS_TWO, "serving_default",
                                                    {"x": floor_input})).connect(),
            "rest_half_plus_two": client(RestPredictor(floor_url, floor_body)),
            "rest_bare_floor": client(RestPredictor(f"{background.rest_floor.url}/v1/models/{HALF_PLUS_TWO}:predict",
                                                    floor_body)),
            "rest_b64_bare_floor": client(RestPredictor(
                f"{background.rest_b64_floor.url}/v1/models/{bench.model_name}:predict", bench.b64_body)),
        }
        if background.peer is not None:
            paths["kserve_rest_b64"] = client(RestPredictor(f"{background.peer.url}/v1/models/{PEER_MODEL}:predict",
                                                            bench.b64_body))
        timings = timed_rounds(paths, bench.args.requests, warmup=10)
        # The gRPC floor pair answers several hundred requests a second: it gets its own, longer load, alternated.
        floor_servers = {"grpc_half_plus_two": server_process,
                         "grpc_bare_floor": psutil.Process(background.grpc_floor.process.pid)}
        loads = alternated_loads({name: paths[name] for name in floor_servers}, bench.args.floor_requests,
                                 CONCURRENT_CLIENTS, floor_servers)
        loads.update(loads_at(
            {name: paths[name] for name in ("rest_half_plus_two", "rest_bare_floor", "in_process_default",
                                            "in_process_preprocess", "grpc_default", "rest_b64_preprocess")},
            bench.args.load_requests))
        # What the libraries alone spend on the served paths' requests: the bare servers, answering with canned
        # copies of model_server's answers, get as many requests as the gRPC floor pair (their CPU is read in
        # 10 ms ticks).
        bare_servers = {"grpc_bare_model_floor": background.grpc_model_floor, "rest_b64_bare_floor":
                        background.rest_b64_floor}
        paths["grpc_bare_model_floor"] = client(GrpcPredictor(background.grpc_model_floor.target, bench.model_name,
                                                              "serving_default", {"x": image})).connect()
        loads.update(loads_at({name: paths[name] for name in bare_servers}, bench.args.floor_requests,
                              processes={name: psutil.Process(server.process.pid)
                                         for name, server in bare_servers.items()}))
        peer_loads = {}
        if "kserve_rest_b64" in paths:
            processes = {"rest_b64_preprocess": server_process,
                         "kserve_rest_b64": psutil.Process(background.peer.process.pid)}
            for clients in PEER_CLIENTS:
                peer_loads[clients] = alternated_loads(
                    {name: paths[name] for name in ("rest_b64_preprocess", "kserve_rest_b64")},
                    bench.args.load_requests, clients, processes)
    p50 = {name: p50_ms(values) for name, values in timings.items()}
    figures = {name: f"{name:24} p50 {value:8.2f} ms" for name, value in p50.items()}
    figures.update({f"{name} load": f"{name:24} {timed.load.throughput:8.1f} requests/s at {CONCURRENT_CLIENTS} "
                                    "clients" for name, timed in loads.items()})
    figures.update({f"{name} load {clients}": f"{name:24} {timed.load.throughput:8.1f} requests/s, p50 "
                                              f"{timed.load.percentile_ms(50):7.1f} ms at {clients} clients"
                    for clients, by_name in peer_loads.items() for name, timed in by_name.items()})
    figures["cpu"] = (f"CPU per request at {CONCURRENT_CLIENTS} clients in this process (the model's work for an "
                      "in-process path, the clients' for a served one): " +
                      ", ".join(f"{name} {loads[name].own_ms:.2f} ms" for path in SERVED_PATHS.values()
                                for name in (path.served, path.in_process)))
    figures["floor cpu"] = server_and_clients_cpu({name: loads[name] for name in floor_servers})
    figures["bare cpu"] = server_and_clients_cpu({path.bare: loads[path.bare] for path in SERVED_PATHS.values()})
    if peer_loads:
        at_c16 = peer_loads[CONCURRENT_CLIENTS]
        figures["peer cpu"] = server_and_clients_cpu(at_c16)
    figures["first"] = f"first request after warmup {first_request * 1000:.2f} ms"
    throughput = {name: timed.load.throughput for name, timed in loads.items()}
    ratios = {
        "grpc_overhead": p50["grpc_default"] / p50["in_process_default"],
        "rest_b64_overhead": p50["rest_b64_preprocess"] / p50["in_process_preprocess"],
        "rest_float_overhead": p50["rest_float_default"] / p50["in_process_default"],
        "warm_first_request_ratio": first_request * 1000 / p50["grpc_default"],
        "grpc_floor_ratio": p50["grpc_half_plus_two"] / p50["grpc_bare_floor"],
        "rest_floor_ratio": p50["rest_half_plus_two"] / p50["rest_bare_floor"],
        "rest_b64_limit": 1 + p50["rest_b64_bare_floor"] / p50["in_process_preprocess"],
        "grpc_floor_throughput_ratio": throughput["grpc_half_plus_two"] / throughput["grpc_bare_floor"],
        "rest_floor_throughput_ratio": throughput["rest_half_plus_two"] / throughput["rest_bare_floor"],
    }
    for protocol, path in SERVED_PATHS.items():
        model_ms, clients_ms = loads[path.in_process].own_ms, loads[path.served].own_ms
        in_process_throughput = throughput[path.in_process]
        ratios[f"throughput_ratio_c16_{protocol}"] = throughput[path.served] / in_process_throughput
        ratios[f"throughput_ratio_c16_{protocol}_limit"] = best_throughput(model_ms, clients_ms) / in_process_throughput
        ratios[f"throughput_ratio_c16_{protocol}_library_limit"] = (
            best_throughput(model_ms + loads[path.bare].server_ms, clients_ms) / in_process_throughput)
    for suffix in ("", "_limit", "_library_limit"):
        ratios[f"throughput_ratio_c16{suffix}"] = min(ratios[f"throughput_ratio_c16_{protocol}{suffix}"]
                                                      for protocol in SERVED_PATHS)
    if "kserve_rest_b64" in p50:
        ratios["peer_rest_b64_ratio"] = p50["rest_b64_preprocess"] / p50["kserve_rest_b64"]
        for clients, by_name in peer_loads.items():
            ours, theirs = by_name["rest_b64_preprocess"].load, by_name["kserve_rest_b64"].load
            ratios[f"peer_throughput_ratio_c{clients}"] = ours.throughput / theirs.throughput
            if clients > 1:
                ratios[f"peer_p50_ratio_c{clients}"] = ours.percentile_ms(50) / theirs.percentile_ms(50)
        ratios["peer_cpu_ratio_c16"] = at_c16["rest_b64_preprocess"].server_ms / at_c16["kserve_rest_b64"].server_ms
        rest = SERVED_PATHS["rest"]
        model_ms = loads[rest.in_process].own_ms
        for ratio, cpu_ms in (("peer_throughput_limit_c16", model_ms),
                              ("peer_throughput_library_limit_c16", model_ms + loads[rest.bare].server_ms)):
            ratios[ratio] = (best_throughput(cpu_ms, at_c16[rest.served].own_ms) /
                             at_c16["kserve_rest_b64"].load.throughput)
    return figures, {key: round(value, 3) for key, value in ratios.items()}


def server_and_clients_cpu(loads):
    """A printed line: the CPU per request each server and its clients spent in `loads` ({name: TimedLoad})."""
    return (f"CPU per request at {CONCURRENT_CLIENTS} clients, server (its clients): " +
            ", ".join(f"{name} {timed.server_ms:.2f} ms ({timed.own_ms:.2f} ms)" for name, timed in loads.items()))


def measure_batching(bench):
    """Per repeat: in-process batch-32 throughput from BATCH_THREADS threads, then
    the server batching 32 concurrent batch-1 clients on BATCH_THREADS batch threads, then the bare gRPC server
    answering the same 32 clients with the canned batch-1 answer, each with the CPU it cost."""
    batch = np.repeat(bench.image, BATCH_SIZE, axis=0)
    batching = BatchingParameters()
    batching.max_batch_size.value = BATCH_SIZE
    # The guide's starting point on CPUs (tensorflow_serving/batching/README.md, "CPU-only: One Approach"):
    # no timeout, so a batch holds what queued while the batch threads were busy.
    batching.batch_timeout_micros.value = 0
    batching.num_batch_threads.value = BATCH_THREADS
    batching.max_enqueued_batches.value = 1000
    batching_path = BENCH_DIR / "batching.config"
    write_config(batching, batching_path)
    rounds, runs = bench.args.batch_rounds, []
    in_process_batch = partial(bench.bundle.run, "serving_default", {"x": batch})
    flags = ["--enable_batching", f"--batching_parameters_file={batching_path}"]
    bare_floor = bench.background.grpc_model_floor
    with running_server(bench, *flags) as (grpc_target, _, server_process), \
            closing(GrpcPredictor(grpc_target, bench.model_name, "serving_default", {"x": bench.image})) as client, \
            closing(GrpcPredictor(bare_floor.target, bench.model_name, "serving_default",
                                  {"x": bench.image})) as bare_client:
        run_load(client, BATCH_SIZE * 3, concurrency=BATCH_SIZE)
        run_load(bare_client, BATCH_SIZE, concurrency=BATCH_SIZE)
        for _ in range(bench.args.repeats):
            run_load(in_process_batch, BATCH_THREADS * 2, concurrency=BATCH_THREADS)
            in_process = timed_load("in-process batch", in_process_batch, rounds, BATCH_THREADS)
            served = timed_load("batched", client, BATCH_SIZE * rounds, BATCH_SIZE, server_process)
            bare = timed_load("bare gRPC floor", bare_client, bench.args.floor_requests, BATCH_SIZE,
                              psutil.Process(bare_floor.process.pid))
            images_per_second = BATCH_SIZE * in_process.load.throughput
            model_ms, client_ms, bare_ms = in_process.own_ms / BATCH_SIZE, served.own_ms, bare.server_ms
            runs.append(({"batch": f"batch {BATCH_SIZE}: in-process {images_per_second:.1f} images/s, "
                                   f"{model_ms:.2f} ms of CPU an image; served with batching, {BATCH_SIZE} gRPC "
                                   f"clients: {served.load.throughput:.1f} requests/s, CPU a request: the server's "
                                   f"{served.server_ms:.2f} ms, the clients' "
                                   f"{client_ms:.2f} ms; the bare gRPC server's {bare_ms:.2f} ms"},
                         {"batch_throughput_ratio": round(served.load.throughput / images_per_second, 3),
                          "batch_throughput_limit": round(best_throughput(model_ms, client_ms) / images_per_second,
                                                          3),
                          "batch_throughput_library_limit": round(
                              best_throughput(model_ms + bare_ms, client_ms) / images_per_second, 3)}))
    return runs
