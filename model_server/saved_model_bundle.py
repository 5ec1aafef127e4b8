"""Load a SavedModel as TF Serving's TF1 runtime does, and run its signatures.

TF Serving's C++ server loads every version with the TF1 session loader (a
SavedModelBundle: one Graph and one Session) and runs a signature by feeding
and fetching the tensor names in its SignatureDef. Doing the same here means a
SavedModel that breaks in the real server breaks here too.
"""

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.framework import ops

SERVING_TAG = tf.saved_model.SERVING


class SavedModelBundle:
    """One loaded SavedModel version: its MetaGraphDef and a Session to run it."""

    def __init__(self, export_dir, intra_op_threads=0, inter_op_threads=0):
        self.export_dir = str(export_dir)
        self.graph = tf.Graph()
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=intra_op_threads,
            inter_op_parallelism_threads=inter_op_threads)
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        self._callables = {}
        try:
            with self.graph.as_default():
                self.meta_graph_def = tf.compat.v1.saved_model.loader.load(
                    self.session, [SERVING_TAG], self.export_dir)
        except Exception:
            self.close()
            raise
        self.signature_defs = dict(self.meta_graph_def.signature_def)

    def run(self, signature_name, inputs, output_filter=()):
        """Feed `inputs` ({input key: array}) to a signature; return {output key: array}.

        Keys must be checked by the caller (see model_server.predict_util); tensor names
        come from the SignatureDef, as in TF Serving.
        """
        signature = self.signature_defs[signature_name]
        input_keys = tuple(sorted(inputs))
        output_keys = tuple(sorted(output_filter or signature.outputs))
        key = (signature_name, input_keys, output_keys)
        run = self._callables.get(key)
        if run is None:
            # Feed and fetch by tensor name through the C API, as TF Serving's Session::Run
            # does: no Python-side static shape checks that the C++ server does not make.
            options = config_pb2.CallableOptions(
                feed=[signature.inputs[k].name for k in input_keys],
                fetch=[signature.outputs[k].name for k in output_keys])
            run = self.session._make_callable_from_options(options)  # noqa: SLF001 - the v1 C-API path
            self._callables[key] = run
        values = run(*(self._feed_value(signature.inputs[k], inputs[k]) for k in input_keys))
        return dict(zip(output_keys, values))

    @staticmethod
    def _feed_value(tensor_info, value):
        """The value as the signature's type; strings stay strings whatever the declared type, as
        TF Serving feeds classify/regress examples (the session then checks the graph's type)."""
        dtype = tf.dtypes.as_dtype(tensor_info.dtype)
        value = np.asarray(value)
        return np.asarray(value, dtype=object if dtype == tf.string or value.dtype.kind in "OSU" else
                          dtype.as_numpy_dtype)

    def close(self):
        """Free the version's Session and Graph now, as deleting TF Serving's SavedModelBundle does.

        A tf.Graph and its Operations (and the Variables in its collections) reference each other, so a
        dropped Graph (its C++ graph and function library, megabytes per version) waits for a full cyclic
        garbage collection, which a serving process with TensorFlow imported can go hours without: config
        churn grew the server by every version it unloaded. Emptied and dismantled, the Graph goes with
        the bundle's last reference.
        """
        self._callables.clear()  # each releases its callable in the open Session
        self.session.close()
        for collection in self.graph.get_all_collection_keys():  # TF1 models' Variables, Savers, ...
            self.graph.clear_collection(collection)
        ops.dismantle_graph(self.graph)
