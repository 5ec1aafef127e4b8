"""Start the model server: load the models, then open the gRPC and REST ports."""

import asyncio
import logging
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from aiohttp import web

from model_server.batching import THREAD_POOL_NAME, BatchingOptions, BatchScheduler
from model_server.bundle import SavedModelBundle
from model_server.cli import FlagError, parse_flags, usage
from model_server.config import ConfigError, read_model_server_config, read_proto_text_file, single_model_config
from model_server.core import ServingCore
from model_server.grpc_api import make_grpc_server
from model_server.manager import ModelManager
from model_server.metrics import CONTENT_TYPE, DEFAULT_PROMETHEUS_PATH, ServerMetrics
from model_server.protos import BatchingParameters, MonitoringConfig
from model_server.rest import RestApi
from model_server.status import ServingError
from model_server.warmup import run_warmup

log = logging.getLogger("model_server")
# Request threads shared by gRPC and REST: enough for every client of a batching benchmark to
# wait in a batch at once (TF Serving's gRPC server also runs many threads).
WORKER_THREADS = 64


def parse_channel_arguments(text):
    """--grpc_channel_arguments: 'key=value,key=value' (integers where they parse)."""
    arguments = []
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        arguments.append((key.strip(), int(value) if value.strip().lstrip("-").isdigit() else value.strip()))
    return arguments


class StartupError(Exception):
    """The server could not open its ports; the message is TF Serving's status text."""


class ModelServer:
    """One running server: the manager, its pollers, the gRPC server and the REST app."""

    def __init__(self, options):
        self.options = options
        self.stopping = threading.Event()
        self.metrics = ServerMetrics()
        self.monitoring = MonitoringConfig()
        if options.monitoring_config_file:
            self.monitoring = read_proto_text_file(options.monitoring_config_file, MonitoringConfig,
                                                       "monitoring config file")
        self.batcher = None
        if options.enable_batching:
            parameters = BatchingParameters()
            if options.batching_parameters_file:
                parameters = read_proto_text_file(options.batching_parameters_file, BatchingParameters,
                                                  "batching parameters file")
            else:
                parameters.thread_pool_name.value = THREAD_POOL_NAME
            self.batcher = BatchScheduler(BatchingOptions.from_proto(parameters), self.metrics)
        self.manager = ModelManager(
            partial(SavedModelBundle, intra_op_threads=options.tensorflow_intra_op_parallelism,
                    inter_op_threads=options.tensorflow_inter_op_parallelism),
            allow_version_labels_for_unavailable_models=options.allow_version_labels_for_unavailable_models,
            on_loaded=self._warm_up, metrics=self.metrics)
        self.core = ServingCore(self.manager, self.batcher, self.metrics, options.max_request_tensor_elements,
                                options.enable_serialization_as_tensor_content)
        self.executor = ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="serving")

    def _warm_up(self, servable):
        if self.options.enable_model_warmup:
            run_warmup(self.core, servable, self.options.num_request_iterations_for_warmup, self.metrics)

    async def _prometheus(self, request):
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    def initial_config(self):
        # As in TF Serving, a config file wins over --model_name/--model_base_path (the Docker
        # image's entrypoint always passes both).
        if self.options.model_config_file:
            return read_model_server_config(self.options.model_config_file)
        return single_model_config(self.options.model_name, self.options.model_base_path)

    def reload_config(self, config):
        """ModelService.HandleReloadConfigRequest and config-file polling."""
        self.manager.apply_config(config)

    def _poll(self):
        config_every = self.options.model_config_file_poll_wait_seconds
        files_every = self.options.file_system_poll_wait_seconds
        intervals = [s for s in (config_every, files_every) if s > 0]
        if not intervals:
            return
        tick, elapsed = min(intervals), 0
        while not self.stopping.wait(tick):
            elapsed += tick
            if config_every > 0 and self.options.model_config_file and elapsed % config_every < tick:
                self._poll_config_file()
            if files_every > 0 and elapsed % files_every < tick:
                self.manager.poll_file_system()

    def _poll_config_file(self):
        """TF Serving's PollFilesystemAndReloadConfig: every poll reads the file and reloads it.

        So a refused config is tried again at the next poll, against the versions' states then.
        """
        try:
            config = read_model_server_config(self.options.model_config_file)
        except ConfigError as error:
            log.error("Failed to read ModelServerConfig file: %s", error)
            return
        try:
            self.reload_config(config)
        except ServingError as error:
            log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", error.message)

    async def serve(self):
        options = self.options
        grpc_server = make_grpc_server(self.core, self.reload_config, self.executor,
                                       parse_channel_arguments(options.grpc_channel_arguments), self.metrics)
        try:
            if options.port:  # --port=0 serves gRPC on --grpc_socket_path only, as TF Serving does
                grpc_server.add_insecure_port(f"{options.bind_address}:{options.port}")
            if options.grpc_socket_path:
                grpc_server.add_insecure_port(f"unix:{options.grpc_socket_path}")
        except RuntimeError:  # grpcio could not bind: TF Serving's BuildAndStart fails the same way
            raise StartupError("INVALID_ARGUMENT: Failed to BuildAndStart gRPC server") from None
        grpc_server.start()
        if options.port:
            log.info("Running gRPC ModelServer at %s:%d ...", options.bind_address, options.port)
        if options.grpc_socket_path:
            log.info("Running gRPC ModelServer at UNIX socket %s ...", options.grpc_socket_path)
        runner = None
        if options.rest_api_port and options.rest_api_port == options.port:
            log.error("server_options.http_port cannot be same as grpc_port. Please use a different port for "
                      "HTTP/REST API. Skipped exporting HTTP/REST API.")
        elif options.rest_api_port:
            prometheus = self.monitoring.prometheus_config
            extra_routes = {prometheus.path or DEFAULT_PROMETHEUS_PATH: self._prometheus} if prometheus.enable else {}
            api = RestApi(self.core, self.executor, options.rest_api_max_body_bytes, options.rest_api_timeout_in_ms,
                          extra_routes, self.metrics)
            runner = api.make_runner()
            await runner.setup()
            try:
                await web.TCPSite(runner, options.bind_address, options.rest_api_port).start()
            except OSError:  # as TF Serving: say so in one line and go on serving gRPC
                log.error("Failed to start HTTP Server at localhost:%d", options.rest_api_port)
                await runner.cleanup()
                runner = None
            else:
                log.info("Exporting HTTP/REST API at:%s:%d ...", options.bind_address, options.rest_api_port)
        poller = threading.Thread(target=self._poll, name="pollers", daemon=True)
        poller.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("Shutting down")
        self.stopping.set()
        if runner is not None:
            await runner.cleanup()
        grpc_server.stop(grace=5).wait()
        poller.join()
        self.manager.close()
        if self.batcher is not None:
            self.batcher.close()
        self.executor.shutdown()


def main(argv=None):
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(levelname).1s %(name)s] %(message)s", datefmt="%H:%M:%S")
    try:
        options = parse_flags(sys.argv[1:] if argv is None else argv)
    except FlagError as error:
        print(f"ERROR: {error}\n{usage()}", file=sys.stderr)
        return 1
    try:
        server = ModelServer(options)
    except (ConfigError, ServingError) as error:
        log.error("%s", error)
        return 1
    try:
        server.manager.apply_config(server.initial_config())
    except ConfigError as error:
        log.error("%s", error)
        return 1
    except ServingError as error:
        return failed_to_start(server, f"{error.code.name}: {error.message}")
    try:
        asyncio.run(server.serve())
    except StartupError as error:
        return failed_to_start(server, str(error))
    return 0


def failed_to_start(server, status):
    """TF Serving's main.cc: the failed start-up status on stdout, then exit code 255 (it returns -1)."""
    print(f"Failed to start server. Error: {status}", flush=True)
    server.manager.close()
    return 255
