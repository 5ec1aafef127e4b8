"""The servers `make bench` compares model_server with, each run in its own process:

- floor-grpc: a bare grpcio PredictionService whose every Predict answers a canned PredictResponse;
- floor-rest: a bare aiohttp handler whose every request is answered with canned bytes;
- peer-kserve: KServe's Python ModelServer (V1 REST) running `serving_preprocess` on b64 JPEGs through
  model_server's SavedModelBundle, from the bench-only venv (build/bench-venv).

`BenchServer(kind, python, arguments, log_dir, name=kind).start()` runs one with `python` (a ManagedServer: recorded in
build/run/, stopped with its starter) and returns once it answers:

    python -m labtools.bench_servers <kind> <port> <argument>
"""

import os
import sys
from pathlib import Path

import grpc

from utils.paths import PROJECT_ROOT
from utils.runtime.managed_server import ManagedServer
from utils.runtime.processes import free_port

PEER_MODEL = "peer"


def serve_grpc_floor(port, response_path):
    """A bare grpcio PredictionService: every Predict answers the PredictResponse in `response_path`."""
    from concurrent.futures import ThreadPoolExecutor

    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from model_server.contract import CHANNEL_OPTIONS, DEFAULT_MAX_GRPC_REQUEST_BYTES

    class CannedPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def __init__(self, response):
            self.response = response

        def Predict(self, request, context):
            return self.response

    response = predict_pb2.PredictResponse.FromString(Path(response_path).read_bytes())
    # model_server's own limits: no send limit, requests up to its default size.
    options = {**dict(CHANNEL_OPTIONS), "grpc.max_receive_message_length": DEFAULT_MAX_GRPC_REQUEST_BYTES}
    server = grpc.server(ThreadPoolExecutor(64), options=list(options.items()))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(CannedPredictionService(response), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def serve_rest_floor(port, body_path):
    """A bare aiohttp server: every request's body is read, then answered with the bytes in `body_path`."""
    from aiohttp import web

    body = Path(body_path).read_bytes()

    async def canned(request):
        await request.read()
        return web.Response(body=body, headers={"Content-Type": "application/json"})

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", canned)
    web.run_app(app, host="127.0.0.1", port=int(port), access_log=None, print=None)


def serve_kserve_peer(port, export_dir, intra_op_threads="0", inter_op_threads="0"):
    """KServe's ModelServer (V1 REST) running `serving_preprocess` on b64 JPEGs through SavedModelBundle, its
    TensorFlow pools sized as model_server's are (0: TensorFlow's choice)."""
    import asyncio
    import base64

    import kserve
    import numpy as np

    # The same loader as the in-process baseline: model_server's own.
    from model_server.saved_model_bundle import SavedModelBundle

    class BundleModel(kserve.Model):
        def __init__(self, name):
            super().__init__(name)
            self.bundle = SavedModelBundle(export_dir, int(intra_op_threads), int(inter_op_threads))
            self.ready = True

        async def predict(self, payload, headers=None):
            raw = np.array([base64.b64decode(item["b64"]) for item in payload["instances"]], dtype=object)
            outputs = await asyncio.to_thread(self.bundle.run, "serving_preprocess", {"raw_images": raw})
            columns = {name: (np.char.decode(value.astype(bytes)) if value.dtype == object else value).tolist()
                       for name, value in outputs.items()}
            return {"predictions": [dict(zip(columns, row)) for row in zip(*columns.values())]}

    kserve.ModelServer(http_port=int(port), grpc_port=free_port(), enable_grpc=False, workers=1,
                       enable_latency_logging=False).start([BundleModel(PEER_MODEL)])


# kind: (serve function, the HTTP path that answers 200 once it is ready; None: a gRPC server)
SERVERS = {
    "floor-grpc": (serve_grpc_floor, None),
    "floor-rest": (serve_rest_floor, "/"),
    "peer-kserve": (serve_kserve_peer, f"/v1/models/{PEER_MODEL}"),
}


class BenchServer(ManagedServer):
    """One of SERVERS, run by `python` with `arguments` in its own process on a free port.

    `start` returns once it answers; a LabError if it exits first (its log is in `log_dir`).
    """

    def __init__(self, kind, python, arguments, log_dir, name=None):
        name = name or kind  # names the log: two servers of one kind need two names
        self.kind, self.port, ready_path = f"bench {name}", free_port(), SERVERS[kind][1]
        self.ready_url = None if ready_path is None else f"{self.url}{ready_path}"
        super().__init__([python, "-m", "labtools.bench_servers", kind, self.port, *arguments], {name: self.port},
                         Path(log_dir) / f"{name}.log",
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"})

    @property
    def target(self):
        return f"127.0.0.1:{self.port}"

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def answering(self):
        """A REST server answers 200 at `ready_url`; the gRPC floor accepts a connection."""
        if self.ready_url is not None:
            return super().answering()
        with grpc.insecure_channel(self.target) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=1)
            except grpc.FutureTimeoutError:
                return False
        return True


def main(argv=None):
    kind, port, *arguments = sys.argv[1:] if argv is None else argv
    SERVERS[kind][0](port, *arguments)


if __name__ == "__main__":
    main()
