"""Start the model server: load the models, then open the gRPC and REST ports."""

import asyncio
import logging
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from aiohttp import web

from model_server.bundle import SavedModelBundle
from model_server.cli import FlagError, parse_flags, usage
from model_server.config import ConfigError, read_model_server_config, single_model_config
from model_server.core import ServingCore
from model_server.grpc_api import make_grpc_server
from model_server.manager import ModelManager
from model_server.rest import RestApi
from model_server.status import ServingError

log = logging.getLogger("model_server")
WORKER_THREADS = 16


def parse_channel_arguments(text):
    """--grpc_channel_arguments: 'key=value,key=value' (integers where they parse)."""
    arguments = []
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        arguments.append((key.strip(), int(value) if value.strip().lstrip("-").isdigit() else value.strip()))
    return arguments


class ModelServer:
    """One running server: the manager, its pollers, the gRPC server and the REST app."""

    def __init__(self, options):
        self.options = options
        self.stopping = threading.Event()
        self.manager = ModelManager(
            partial(SavedModelBundle, intra_op_threads=options.tensorflow_intra_op_parallelism,
                    inter_op_threads=options.tensorflow_inter_op_parallelism),
            allow_version_labels_for_unavailable_models=options.allow_version_labels_for_unavailable_models)
        self.core = ServingCore(self.manager)
        self.executor = ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="serving")
        self._config_text = None

    def initial_config(self):
        # As in TF Serving, a config file wins over --model_name/--model_base_path (the Docker
        # image's entrypoint always passes both).
        if self.options.model_config_file:
            config = read_model_server_config(self.options.model_config_file)
            self._config_text = Path(self.options.model_config_file).read_text()
            return config
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
        try:
            text = Path(self.options.model_config_file).read_text()
        except OSError as error:
            log.error("Failed to read ModelServerConfig file: %s", error)
            return
        if text == self._config_text:
            return
        try:
            config = read_model_server_config(self.options.model_config_file)
            self.reload_config(config)
        except ConfigError as error:
            log.error("Failed to read ModelServerConfig file: %s", error)
            return
        except ServingError as error:
            log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", error.message)
            return
        finally:
            self._config_text = text
        log.info("Reloaded model config from %s", self.options.model_config_file)

    async def serve(self):
        options = self.options
        grpc_server = make_grpc_server(self.core, self.reload_config, self.executor,
                                       parse_channel_arguments(options.grpc_channel_arguments))
        grpc_port = grpc_server.add_insecure_port(f"{options.bind_address}:{options.port}")
        if options.grpc_socket_path:
            grpc_server.add_insecure_port(f"unix:{options.grpc_socket_path}")
        grpc_server.start()
        log.info("Running gRPC ModelServer at %s:%d ...", options.bind_address, grpc_port)
        if options.grpc_socket_path:
            log.info("Running gRPC ModelServer at UNIX socket %s ...", options.grpc_socket_path)
        runner = None
        if options.rest_api_port == options.port:
            log.error("server_options.http_port cannot be same as grpc_port. Please use a different port for "
                      "HTTP/REST API. Skipped exporting HTTP/REST API.")
        elif options.rest_api_port:
            api = RestApi(self.core, self.executor, options.rest_api_max_body_bytes, options.rest_api_timeout_in_ms)
            runner = web.AppRunner(api.make_app(), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, options.bind_address, options.rest_api_port).start()
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
        self.executor.shutdown()


def main(argv=None):
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(levelname).1s %(name)s] %(message)s", datefmt="%H:%M:%S")
    try:
        options = parse_flags(sys.argv[1:] if argv is None else argv)
        for flag in ("enable_batching", "monitoring_config_file"):
            if getattr(options, flag):
                raise FlagError(f"--{flag} is not implemented by this server yet")
    except FlagError as error:
        print(f"ERROR: {error}\n{usage()}", file=sys.stderr)
        return 1
    server = ModelServer(options)
    try:
        server.manager.apply_config(server.initial_config())
    except (ConfigError, OSError) as error:
        log.error("%s", error)
        return 1
    except ServingError as error:
        log.error("Error while loading models: %s", error.message)
        return 1
    asyncio.run(server.serve())
    return 0
