"""Load a SavedModel as TF Serving's TF1 runtime does, and run its signatures.

TF Serving's C++ server loads every version with the TF1 session loader (a
SavedModelBundle: one Graph and one Session) and runs a signature by feeding
and fetching the tensor names in its SignatureDef. Doing the same here means a
SavedModel that breaks in the real server breaks here too.
"""

import tensorflow as tf

SERVING_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"


class SavedModelBundle:
    """One loaded SavedModel version: its MetaGraphDef and a Session to run it."""

    def __init__(self, export_dir, intra_op_threads=0, inter_op_threads=0):
        self.export_dir = str(export_dir)
        self.graph = tf.Graph()
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=intra_op_threads,
            inter_op_parallelism_threads=inter_op_threads)
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        try:
            with self.graph.as_default():
                self.meta_graph_def = tf.compat.v1.saved_model.loader.load(
                    self.session, [SERVING_TAG], self.export_dir)
        except Exception:
            self.session.close()
            raise
        self.signature_defs = dict(self.meta_graph_def.signature_def)
        self._callables = {}

    def run(self, signature_name, inputs, output_filter=()):
        """Feed `inputs` ({input key: array}) to a signature; return {output key: array}.

        Keys must be checked by the caller (see model_server.core); tensor names
        come from the SignatureDef, as in TF Serving.
        """
        signature = self.signature_defs[signature_name]
        input_keys = tuple(sorted(inputs))
        output_keys = tuple(sorted(output_filter or signature.outputs))
        key = (signature_name, input_keys, output_keys)
        run = self._callables.get(key)
        if run is None:
            run = self.session.make_callable(
                [signature.outputs[k].name for k in output_keys],
                feed_list=[signature.inputs[k].name for k in input_keys])
            self._callables[key] = run
        values = run(*(inputs[k] for k in input_keys))
        return dict(zip(output_keys, values))

    def close(self):
        self.session.close()
