"""Server-side request batching with TF Serving's BatchingParameters (batching/README.md).

Requests to the same model version and signature, from REST and gRPC alike, queue
as tasks; a batch closes when it reaches `max_batch_size` or its oldest task has
waited `batch_timeout_micros`; `num_batch_threads` threads each run one batch as a
single `session.run` and split the outputs back to the tasks. A full queue
(`max_enqueued_batches`) answers UNAVAILABLE.
"""

import os
import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np

from model_server.status import ServingError, invalid_argument

QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"
THREAD_POOL_NAME = "model_server_batch_threads"


@dataclass(frozen=True)
class BatchingOptions:
    """BatchingParameters with TF Serving's defaults filled in and checked."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    thread_pool_name: str = THREAD_POOL_NAME
    allowed_batch_sizes: tuple = ()
    pad_variable_length_inputs: bool = False

    @classmethod
    def from_proto(cls, parameters):
        values = {}
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
                     "thread_pool_name"):
            if parameters.HasField(name):
                values[name] = getattr(parameters, name).value
        options = cls(**values, allowed_batch_sizes=tuple(parameters.allowed_batch_sizes),
                      pad_variable_length_inputs=parameters.pad_variable_length_inputs)
        options.validate()
        return options

    def validate(self):
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise invalid_argument(f"{name} must be positive; was {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise invalid_argument("batch_timeout_micros must be non-negative")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1:
                raise invalid_argument("allowed_batch_sizes entries must be monotonically increasing")
            if sizes[-1] != self.max_batch_size:
                raise invalid_argument("final entry in allowed_batch_sizes must equal max_batch_size")

    def padded_size(self, size):
        """The smallest allowed batch size that holds `size` rows."""
        return next((s for s in self.allowed_batch_sizes if s >= size), size)


@dataclass
class _Task:
    inputs: dict
    size: int
    enqueued: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    outputs: dict = None
    error: Exception = None


@dataclass
class _Batch:
    tasks: list = field(default_factory=list)
    size: int = 0


def _concat(arrays, pad):
    """Concatenate along axis 0; with `pad`, first pad every other dimension to the largest."""
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) > 1:
        if not pad:
            return None
        target = tuple(max(dims) for dims in zip(*(a.shape[1:] for a in arrays)))
        if any(len(a.shape) != len(target) + 1 for a in arrays):
            return None
        arrays = [np.pad(a, [(0, 0)] + [(0, t - s) for s, t in zip(a.shape[1:], target)],
                         constant_values=b"" if a.dtype == object else 0) for a in arrays]
    return np.concatenate(arrays, axis=0)


class BatchScheduler:
    """One queue per (model, version, signature, inputs, outputs), served by a shared pool of batch threads.

    A version is unloaded only once its queued tasks are done (they hold it), so a reloaded
    version with the same name and number never shares a queue with its predecessor; then
    `forget` drops its queues and runners, which hold it.
    """

    def __init__(self, options, metrics=None):
        self.options = options
        self.metrics = metrics
        self._queues = {}  # key -> list of _Batch; the last one is open
        self._runners = {}  # key -> (servable, signature_name, output_filter)
        self._condition = threading.Condition()
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"{options.thread_pool_name}-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    @property
    def enqueued_tasks(self):
        """How many requests wait in a queue for their batch to run."""
        with self._condition:
            return sum(len(batch.tasks) for batches in self._queues.values() for batch in batches)

    def run(self, servable, signature_name, inputs, output_filter=()):
        """Enqueue one request's inputs and wait for its share of a batch's outputs."""
        sizes = {value.shape[0] if value.ndim else None for value in inputs.values()}
        if None in sizes or len(sizes) != 1:  # nothing to batch along: run it alone
            return servable.bundle.run(signature_name, inputs, output_filter)
        size = sizes.pop()
        if size > self.options.max_batch_size:
            raise invalid_argument(f"Task size {size} is larger than maximum input batch size "
                                   f"{self.options.max_batch_size}")
        key = (servable.name, servable.version, signature_name, tuple(sorted(inputs)), tuple(output_filter))
        task = _Task(inputs, size)
        with self._condition:
            batches = self._queues.setdefault(key, [])
            self._runners[key] = (servable, signature_name, output_filter)
            if batches and batches[-1].size + size <= self.options.max_batch_size:
                batch = batches[-1]
            elif len(batches) < self.options.max_enqueued_batches:
                batch = _Batch()
                batches.append(batch)
            else:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, QUEUE_FULL)
            batch.tasks.append(task)
            batch.size += size
            self._condition.notify_all()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def forget(self, servable):
        """Drop the queues and runners of an unloading version, whose queued tasks are all done."""
        with self._condition:
            for key in [key for key, runner in self._runners.items() if runner[0] is servable]:
                if not self._queues.get(key):
                    self._queues.pop(key, None)
                    del self._runners[key]

    def _ready_batch(self):
        """(key, batch) of the first batch that is full or has waited its timeout, or the wait left."""
        now = time.perf_counter()
        timeout = self.options.batch_timeout_micros / 1e6
        wait = None
        for key, batches in self._queues.items():
            if not batches:
                continue
            batch = batches[0]
            due = batch.tasks[0].enqueued + timeout
            if batch.size >= self.options.max_batch_size or len(batches) > 1 or now >= due:
                batches.pop(0)
                return key, batch, None
            wait = due - now if wait is None else min(wait, due - now)
        return None, None, wait

    def _work(self):
        while True:
            with self._condition:
                while True:
                    if self._stopping:
                        return
                    key, batch, wait = self._ready_batch()
                    if batch is not None:
                        runner = self._runners[key]
                        break
                    self._condition.wait(wait)
            self._process(runner, batch)
            runner = batch = None  # an idle batch thread holds no version, nor its last batch

    def _process(self, runner, batch):
        servable, signature_name, output_filter = runner
        started = time.perf_counter()
        padded = self.options.padded_size(batch.size)
        if self.metrics is not None:
            for task in batch.tasks:
                self.metrics.queuing_latency.labels(self.options.thread_pool_name).observe(
                    (started - task.enqueued) * 1e6)
            self.metrics.input_batch_size.labels(self.options.thread_pool_name).observe(batch.size)
            self.metrics.processed_batch_size.labels(self.options.thread_pool_name).observe(padded)
        try:
            inputs = {}
            for name in batch.tasks[0].inputs:
                merged = _concat([task.inputs[name] for task in batch.tasks], self.options.pad_variable_length_inputs)
                if merged is None:
                    raise invalid_argument(
                        f"Tensors with name '{name}' from different tasks have different shapes and padding is "
                        "turned off. Set pad_variable_length_inputs to true, or ensure that all tensors with the "
                        "same name have equal dimensions starting with the first dim.")
                if padded > batch.size:  # pad with copies of the first row
                    merged = np.concatenate([merged, np.repeat(merged[:1], padded - batch.size, axis=0)])
                inputs[name] = merged
            outputs = servable.bundle.run(signature_name, inputs, output_filter)
            if any(v.ndim == 0 or v.shape[0] != padded for v in outputs.values()):
                raise invalid_argument("Batched output tensor's 0th dimension does not equal the sum of the 0th "
                                       "dimension sizes of the input tensors")
            offset = 0
            for task in batch.tasks:
                task.outputs = {k: v[offset:offset + task.size] for k, v in outputs.items()}
                offset += task.size
        except Exception as error:  # noqa: BLE001 - handed to every waiting request, none is lost
            for task in batch.tasks:
                task.error = error
        for task in batch.tasks:
            task.done.set()

    def close(self):
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        for thread in self._threads:
            thread.join()
