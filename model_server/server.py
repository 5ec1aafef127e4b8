"""The model server (model_servers/server.cc): load the models, then open the gRPC and REST ports."""

import asyncio
import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import grpc
from aiohttp import web
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from model_server.batching import THREAD_POOL_NAME, BatchingOptions, BatchScheduler
from model_server.config import ConfigError, read_model_server_config, read_proto_text_file, single_model_config
from model_server.contract import DEFAULT_PROMETHEUS_PATH, BatchingParameters, MonitoringConfig, server_options
from model_server.http_rest_api_handler import HttpRestApiHandler
from model_server.metrics import CONTENT_TYPE, ServerMetrics
from model_server.model_service_impl import ModelService
from model_server.predict_util import Predictor, SignatureRunner
from model_server.prediction_service_impl import PredictionService
from model_server.saved_model_bundle import SavedModelBundle
from model_server.saved_model_warmup import run_warmup
from model_server.server_core import ServerCore
from model_server.status import ServingError

log = logging.getLogger("model_server")


class OneLineDeserializationErrors(logging.Filter):
    """grpcio answers bytes that do not parse as the request INTERNAL "Exception deserializing request!"
    (as C++ gRPC, hence TF Serving, answers INTERNAL) and logs a traceback: log one line instead."""

    def filter(self, record):
        if record.exc_info and record.getMessage().startswith("Exception deserializing"):
            record.msg, record.args = f"{record.getMessage()} {record.exc_info[1]}", ()
            record.exc_info = record.exc_text = None
        return True


_DESERIALIZATION_ERRORS = OneLineDeserializationErrors()


def grpc_running_limit(max_threads):
    """How many gRPC requests run at once with --grpc_max_threads, as in TF Serving's server.cc, which
    sets it as grpc++'s ResourceQuota::SetMaxThreads: the sync server's ThreadManager
    (src/cpp/thread_manager/thread_manager.cc) keeps one of its threads polling, so one fewer requests
    run, and one arriving while they all run is answered RESOURCE_EXHAUSTED at once, never queued."""
    return max_threads - 1


def make_grpc_server(predictor, reload_config, executor, channel_arguments=(), metrics=None, max_running=None):
    """PredictionService and ModelService on one grpcio server (not started); past `max_running`
    requests at once, grpcio answers RESOURCE_EXHAUSTED (its details: "Concurrent RPC limit exceeded!";
    grpc++'s: "Server Threadpool Exhausted")."""
    logging.getLogger("grpc._common").addFilter(_DESERIALIZATION_ERRORS)
    server = grpc.server(executor, options=server_options(channel_arguments), maximum_concurrent_rpcs=max_running)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(predictor, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(predictor.server_core, reload_config),
                                                              server)
    return server


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
    """One running server: the ServerCore, its pollers, the gRPC server and the REST app."""

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
        self.server_core = ServerCore(
            partial(SavedModelBundle, intra_op_threads=options.tensorflow_intra_op_parallelism,
                    inter_op_threads=options.tensorflow_inter_op_parallelism),
            allow_version_labels_for_unavailable_models=options.allow_version_labels_for_unavailable_models,
            on_loaded=self._warm_up, metrics=self.metrics,
            on_unloaded=self.batcher.forget if self.batcher is not None else None)
        self.predictor = Predictor(self.server_core, SignatureRunner(self.batcher, self.metrics),
                                   options.max_request_tensor_elements, options.enable_serialization_as_tensor_content)
        # Each front end its own threads, as in TF Serving: gRPC's bounded by --grpc_max_threads (the
        # requests past it refused), REST's by --rest_api_num_threads (http_server.cc's RequestExecutor:
        # the requests past it wait in its queue).
        self.grpc_max_running = grpc_running_limit(options.grpc_max_threads)
        self.grpc_executor = ThreadPoolExecutor(max(1, self.grpc_max_running), thread_name_prefix="grpc")
        self.rest_executor = ThreadPoolExecutor(options.rest_api_num_threads, thread_name_prefix="httprestserver")

    def _warm_up(self, servable):
        if self.options.enable_model_warmup:
            run_warmup(self.predictor, servable, self.options.num_request_iterations_for_warmup, self.metrics)

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
        self.server_core.apply_config(config)

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
                self.server_core.poll_file_system()

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
        grpc_server = make_grpc_server(self.predictor, self.reload_config, self.grpc_executor,
                                       parse_channel_arguments(options.grpc_channel_arguments), self.metrics,
                                       self.grpc_max_running)
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
            api = HttpRestApiHandler(self.predictor, self.rest_executor, options.rest_api_max_body_bytes,
                                     options.rest_api_timeout_in_ms, extra_routes, self.metrics)
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
        self.server_core.close()
        if self.batcher is not None:
            self.batcher.close()
        self.grpc_executor.shutdown()
        self.rest_executor.shutdown()


def run(options):
    """Build the server from parsed flags, load the models and serve until SIGTERM or SIGINT; the exit code."""
    try:
        server = ModelServer(options)
    except (ConfigError, ServingError) as error:
        log.error("%s", error)
        return 1
    try:
        server.server_core.apply_config(server.initial_config())
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
    server.server_core.close()
    return 255
