"""TF Serving's ServerCore (model_servers/server_core.cc): loads, versions and labels models, and
hands out a version for a ModelSpec (GetServableHandle).

Availability-preserving: a new version is loaded (and warmed up) before an old
one is unloaded, and an unloading version waits for the requests that hold it.
"""

import logging
import threading
import time
from dataclasses import dataclass, field

import grpc
import tensorflow as tf

from model_server.config import (aspired_versions, available_versions, check_platforms_served,
                                 validate_model_config_list, validate_no_models_change_platforms)
from model_server.status import ServingError, failed_precondition, invalid_argument, not_found

log = logging.getLogger("model_server")

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclass
class ServableVersion:
    """One version of a model and its TF Serving state."""

    name: str
    version: int
    path: str
    state: str = START
    bundle: object = None
    error: ServingError = None
    in_flight: int = 0
    idle: threading.Condition = field(default_factory=threading.Condition)


class ServableHandle:
    """Holds a version for the length of one request (a context manager)."""

    def __init__(self, servable):
        self.servable = servable

    def __enter__(self):
        return self.servable

    def __exit__(self, *exc_info):
        with self.servable.idle:
            self.servable.in_flight -= 1
            self.servable.idle.notify_all()


class ServerCore:
    """The served models: {name: {version: ServableVersion}} plus version labels."""

    def __init__(self, load_bundle, allow_version_labels_for_unavailable_models=False, on_loaded=None,
                 metrics=None, on_unloaded=None):
        self._load_bundle = load_bundle
        self._metrics = metrics
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._on_loaded = on_loaded or (lambda servable: None)
        # Called once no request holds a version being unloaded (or whose load failed after its
        # warmup ran), for whatever else keeps it: the batcher's queues.
        self._on_unloaded = on_unloaded or (lambda servable: None)
        self._lock = threading.RLock()
        self._reconcile_lock = threading.Lock()
        self._versions = {}  # name -> {version: ServableVersion}, every state incl. END
        self._labels = {}  # name -> {label: version}
        self._config = None  # the last config accepted for loading (TF Serving's ServerCore config_)
        self._models = []  # the ModelConfigs being served (TF Serving's file system source config)

    # --- configuration -------------------------------------------------------

    def apply_config(self, config):
        """TF Serving's ServerCore::ReloadConfig on a ModelServerConfig; raises ServingError.

        In TF Serving's order: check the transition, validate the model list, update the label
        map against the versions' current states, then add and load models. A config refused
        before loading changes nothing served. `config` holds a model_config_list or nothing
        (callers refuse custom_model_config).
        """
        with self._reconcile_lock:
            if self._config is not None and config.WhichOneof("config") != "model_config_list":
                raise failed_precondition("Cannot transition to requested config. It is only legal to "
                                          "transition from one ModelConfigList to another.")
            if config.WhichOneof("config") is None:
                log.info("Taking no action for empty config.")
                return
            validate_model_config_list(config.model_config_list)
            if self._config is not None:
                validate_no_models_change_platforms(self._config.model_config_list, config.model_config_list)
            first_config = self._config is None
            self._config = config  # as TF Serving: kept even if the labels below are refused
            self._update_labels(config)
            log.info("Adding/updating models.")
            check_platforms_served(config.model_config_list)
            self._load_models(config.model_config_list, first_config)
            log.info("Finished reloading config")

    def _load_models(self, config_list, first_config):
        """TF Serving's AddModelsViaModelConfigList: serve exactly these models, then report failures."""
        new_names = {m.name for m in config_list.config} - {m.name for m in self._models}
        for model in config_list.config:
            log.info(" (Re-)adding model: %s", model.name)
            self._reconcile(model)
        for name in {m.name for m in self._models} - {m.name for m in config_list.config}:
            for servable in list(self._versions[name].values()):
                if servable.state == AVAILABLE:
                    self._unload(servable)
        self._models = list(config_list.config)
        log.info("Finished adding/updating models")
        # The first config waits for every model; a reload only for the models it adds.
        awaited = {m.name for m in config_list.config} if first_config else new_names
        with self._lock:
            failed = sorted((s for name in awaited for s in self._versions.get(name, {}).values()
                             if s.state == END and s.error is not None), key=lambda s: (s.name, s.version))
        if failed:
            what = "servable(s)" if first_config else "model(s)"
            details = "".join(f"{{{{name: {s.name} version: {s.version}}} due to error: "
                              f"{s.error.code.name}: {s.error.message}}}, " for s in failed)
            raise ServingError(grpc.StatusCode.UNKNOWN, f"{len(failed)} {what} did not become available: "
                                                        f"{{{details}}}")

    def poll_file_system(self):
        """Pick up new and removed versions on disk for every served model."""
        with self._reconcile_lock:
            for model in self._models:
                self._reconcile(model)

    def _reconcile(self, model):
        on_disk = available_versions(model.base_path)
        if not on_disk:
            log.warning("No versions of servable %s found under base path %s. Did you forget to name "
                        "your leaf directory as a number (eg. '/1/')?", model.name, model.base_path)
        aspired = aspired_versions(model, on_disk)
        with self._lock:
            current = self._versions.setdefault(model.name, {})
            to_load = [v for v in sorted(aspired)
                       if v not in current or (current[v].state == END and current[v].error is None)]
            to_unload = [s for v, s in current.items() if v not in aspired and s.state == AVAILABLE]
        for version in to_load:  # load first: availability-preserving
            self._load(ServableVersion(model.name, version, str(on_disk[version])))
        for servable in to_unload:
            self._unload(servable)

    def _load(self, servable):
        with self._lock:
            self._versions[servable.name][servable.version] = servable
            servable.state = LOADING
        log.info("Loading servable: {name: %s version: %d}", servable.name, servable.version)
        try:
            started = time.perf_counter()
            try:
                servable.bundle = self._load_bundle(servable.path)
            finally:
                self._record_load(servable, started)
            self._on_loaded(servable)
        except tf.errors.OpError as error:
            servable.error = ServingError.from_tf_error(error)
        except ServingError as error:  # warmup failed
            servable.error = error
        except (OSError, ValueError) as error:
            servable.error = ServingError(grpc.StatusCode.UNKNOWN, str(error))
        if servable.error is not None:
            self._on_unloaded(servable)
            if servable.bundle is not None:
                servable.bundle.close()
                servable.bundle = None
            servable.state = END
            log.error("Loading servable: {name: %s version: %d} failed: %s",
                      servable.name, servable.version, servable.error.message)
            return
        with self._lock:
            servable.state = AVAILABLE
        log.info("Successfully loaded servable version {name: %s version: %d}", servable.name, servable.version)

    def _record_load(self, servable, started):
        if self._metrics is None:
            return
        status = "success" if servable.bundle is not None else "fail"
        self._metrics.load_attempt_count.inc((servable.path, status))
        if servable.bundle is not None:
            self._metrics.load_latency.inc((servable.path,), (time.perf_counter() - started) * 1e6)

    def _unload(self, servable):
        with self._lock:
            servable.state = UNLOADING
        with servable.idle:
            servable.idle.wait_for(lambda: servable.in_flight == 0)
        self._on_unloaded(servable)
        if servable.bundle is not None:
            servable.bundle.close()
            servable.bundle = None
        with self._lock:
            servable.state = END
        log.info("Unloaded servable version {name: %s version: %d}", servable.name, servable.version)

    def _update_labels(self, config):
        """TF Serving's UpdateModelVersionLabelMap, against the versions' current states.

        A label must point at an AVAILABLE version. With allow_version_labels_for_unavailable_models
        a new label (or one kept on its version) may point at any version, but a label is never moved
        to an unavailable version: requests for it would fail while that version loads.
        """
        new_labels = {}
        for model in config.model_config_list.config:
            with self._lock:
                states = {version: servable.state for version, servable in self._versions.get(model.name, {}).items()}
                current = dict(self._labels.get(model.name, {}))
            for label, version in sorted(model.version_labels.items()):
                moved = label in current and current[label] != version
                if not (self._allow_unavailable_labels and not moved) and states.get(version) != AVAILABLE:
                    raise failed_precondition(
                        f"Request to assign label to version {version} of model {model.name}, "
                        "which is not currently available for inference")
                new_labels.setdefault(model.name, {})[label] = version
        with self._lock:
            self._labels = new_labels

    def close(self):
        with self._reconcile_lock:
            for versions in list(self._versions.values()):
                for servable in list(versions.values()):
                    if servable.state == AVAILABLE:
                        self._unload(servable)

    # --- requests ------------------------------------------------------------

    def servable_handle(self, model_spec):
        """GetServableHandle: a handle on the version a ModelSpec names (version, label or latest)."""
        if not model_spec.name:
            raise invalid_argument("ModelSpec has no name specified.")
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version":
            return self._acquire(model_spec.name, version=model_spec.version.value)
        if choice == "version_label":
            return self._acquire(model_spec.name, label=model_spec.version_label)
        return self._acquire(model_spec.name)

    def version_for_label(self, name, label):
        with self._lock:
            version = self._labels.get(name, {}).get(label)
        if version is None:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}")
        return version

    def _acquire(self, name, version=None, label=None):
        """A handle on the requested version (or the latest available one)."""
        if label is not None:
            version = self.version_for_label(name, label)
        with self._lock:
            available = {v: s for v, s in self._versions.get(name, {}).items() if s.state == AVAILABLE}
            if version is None:
                servable = available[max(available)] if available else None
                request = f"Latest({name})"
            else:
                servable = available.get(version)
                request = f"Specific({name}, {version})"
            if servable is None:
                raise not_found(f"Servable not found for request: {request}")
            with servable.idle:
                servable.in_flight += 1
        return ServableHandle(servable)

    def version_states(self, name):
        """{version: ServableVersion} in every state, for GetModelStatus."""
        with self._lock:
            return dict(self._versions.get(name, {}))
