"""Model manager: loads and unloads versions as TF Serving's ServerCore does.

Availability-preserving: a new version is loaded (and warmed up) before an old
one is unloaded, and an unloading version waits for the requests that hold it.
"""

import logging
import threading
import time
from dataclasses import dataclass, field

import grpc
import tensorflow as tf

from model_server.config import aspired_versions, available_versions
from model_server.status import ServingError, failed_precondition, not_found

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


class ModelManager:
    """The served models: {name: {version: ServableVersion}} plus version labels."""

    def __init__(self, load_bundle, allow_version_labels_for_unavailable_models=False, on_loaded=None,
                 metrics=None):
        self._load_bundle = load_bundle
        self._metrics = metrics
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._on_loaded = on_loaded or (lambda servable: None)
        self._lock = threading.RLock()
        self._reconcile_lock = threading.Lock()
        self._versions = {}  # name -> {version: ServableVersion}, every state incl. END
        self._labels = {}  # name -> {label: version}
        self._config = None

    # --- configuration -------------------------------------------------------

    def apply_config(self, config):
        """Serve exactly the models in `config` (a ModelServerConfig). Raises ServingError."""
        with self._reconcile_lock:
            new_names = {m.name for m in config.model_config_list.config}
            for model in config.model_config_list.config:
                self._reconcile(model)
            old_names = set(self._versions) - new_names
            for name in old_names:
                for servable in list(self._versions[name].values()):
                    self._unload(servable)
            self._update_labels(config)
            self._config = config
            failures = [s.error for m in config.model_config_list.config
                        for s in self._versions.get(m.name, {}).values() if s.state == END and s.error]
            if failures:
                raise failures[0]

    def poll_file_system(self):
        """Pick up new and removed versions on disk for every configured model."""
        if self._config is None:
            return
        with self._reconcile_lock:
            for model in self._config.model_config_list.config:
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
        if servable.bundle is not None:
            servable.bundle.close()
            servable.bundle = None
        with self._lock:
            servable.state = END
        log.info("Unloaded servable version {name: %s version: %d}", servable.name, servable.version)

    def _update_labels(self, config):
        """TF Serving's UpdateModelVersionLabelMap: labels must point at available versions."""
        new_labels = {}
        for model in config.model_config_list.config:
            for label, version in model.version_labels.items():
                # A label may point at an unavailable version only with the flag, and only if it is new.
                allowed = self._allow_unavailable_labels and label not in self._labels.get(model.name, {})
                servable = self._versions.get(model.name, {}).get(version)
                if not allowed and (servable is None or servable.state != AVAILABLE):
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

    def version_for_label(self, name, label):
        with self._lock:
            version = self._labels.get(name, {}).get(label)
        if version is None:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}")
        return version

    def acquire(self, name, version=None, label=None):
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
