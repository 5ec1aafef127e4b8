"""TF Serving's Prometheus metrics: names, labels and buckets, exposed with prometheus_client.

TF Serving exports TensorFlow's monitoring metrics with '/' turned into ':', so
`/tensorflow/serving/request_count` is `:tensorflow:serving:request_count`, and its
counters carry no `_total` suffix: counters here are a small collector that writes
them that way; histograms are prometheus_client's own.
"""

import threading
from collections import defaultdict

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import Metric

# TF Serving's latency histograms: scale 10, power 1.8, 33 buckets (microseconds).
LATENCY_BUCKETS_MICROS = [float(f"{10 * 1.8 ** i:.6g}") for i in range(33)]
BATCH_SIZE_BUCKETS = [2 ** i for i in range(14)]
CONTENT_TYPE = CONTENT_TYPE_LATEST


class TfServingCounter:
    """A labelled counter exposed as TF Serving does: `name{labels} value`, no `_total`."""

    def __init__(self, name, documentation, labelnames, registry):
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._values = defaultdict(float)
        self._lock = threading.Lock()
        registry.register(self)

    def inc(self, labels, amount=1.0):
        with self._lock:
            self._values[tuple(labels)] += amount

    def collect(self):
        family = Metric(self.name, self.documentation, "counter")
        with self._lock:
            for labels, value in sorted(self._values.items()):
                family.add_sample(self.name, dict(zip(self.labelnames, labels)), value)
        yield family


class _WithoutCreated:
    """A registry's metrics without prometheus_client's `_created` samples, which TF Serving has not."""

    def __init__(self, registry):
        self.registry = registry

    def collect(self):
        for family in self.registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class ServerMetrics:
    """Every metric the server records, in one registry."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=False)

        def histogram(name, documentation, labelnames, buckets=LATENCY_BUCKETS_MICROS):
            return Histogram(name, documentation, labelnames, buckets=buckets, registry=self.registry)

        self.request_count = TfServingCounter(
            ":tensorflow:serving:request_count", "The total number of requests.", ["model_name", "status"],
            self.registry)
        self.request_latency = histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"])
        self.runtime_latency = histogram(
            ":tensorflow:serving:runtime_latency", "Distribution of wall time (in microseconds) for Tensorflow "
            "runtime.", ["model_name", "API", "runtime"])
        self.load_attempt_count = TfServingCounter(
            ":tensorflow:cc:saved_model:load_attempt_count", "The number of times a SavedModel was successfully "
            "loaded.", ["model_path", "status"], self.registry)
        self.load_latency = TfServingCounter(
            ":tensorflow:cc:saved_model:load_latency", "Latency in microseconds for SavedModels that were "
            "successfully loaded.", ["model_path"], self.registry)
        self.warmup_latency = histogram(
            ":tensorflow:serving:model_warmup_latency", "Distribution of wall time (in microseconds) for warming "
            "up the model.", ["model_path", "status"])
        self.queuing_latency = histogram(
            ":tensorflow:serving:batching_session:queuing_latency", "Distribution of wall time spent (in "
            "microseconds) in queuing", ["thread_pool_name"])
        self.input_batch_size = histogram(
            ":tensorflow:serving:batching_session:input_batch_size", "Distribution of the input batch size "
            "(before padding)", ["thread_pool_name"], BATCH_SIZE_BUCKETS)
        self.processed_batch_size = histogram(
            ":tensorflow:serving:batching_session:processed_batch_size", "Distribution of the batch size "
            "processed (after padding)", ["thread_pool_name"], BATCH_SIZE_BUCKETS)

    def record_request(self, model_name, api, entrypoint, status, seconds):
        """Every request is counted; as in TF Serving, only a successful one records its latency."""
        self.request_count.inc((model_name, status))
        if status == "OK":
            self.request_latency.labels(model_name, api, entrypoint).observe(seconds * 1e6)

    def exposition(self):
        """Prometheus text format; counters' HELP/TYPE lines named as TF Serving names them."""
        text = generate_latest(_WithoutCreated(self.registry)).decode()
        for counter in (self.request_count, self.load_attempt_count, self.load_latency):
            for line in ("# HELP", "# TYPE"):
                text = text.replace(f"{line} {counter.name}_total ", f"{line} {counter.name} ")
        return text.encode()
