"""`python -m labtools testdata`: TF Serving's test models and configs, built here with TensorFlow.

The tests and `make bench` run against the models TensorFlow Serving's own tests use
(`tensorflow_serving/servables/tensorflow/testdata`). This command builds them with the
installed TensorFlow and the lab's config writers, under the same names and layout, into
build/testdata/ (once per checkout: a stamp records the TensorFlow version and this file's hash):

- saved_model_half_plus_two_cpu/00000123: TF1 graph, y = 0.5 * x + 2, with TF Serving's
  signatures: serving_default (predict x -> y), classify_x_to_y, regress_x_to_y, regress_x_to_y2
  (0.5 * x + 3) over serialized tf.Example, and regress_x2_to_y3 over floats; assets/foo.txt.
- saved_model_half_plus_two_2_versions/{00000123,00000124}: the same model twice, plus
  classify_x2_to_y3.
- saved_model_half_plus_three/00000123: y = 0.5 * x + 3 with the older signatures TF Serving's
  REST docs use (serving_default, and `tensorflow/serving/regress` declaring DT_FLOAT for its
  serialized examples, as that model does).
- saved_model_half_plus_two_tf2_cpu/00000123: the same function as a TF2 SavedModel
  (tf.function signatures, every method `tensorflow/serving/predict`).
- saved_model_counter/00000123: a stateful model: incr_counter, incr_counter_by(delta),
  reset_counter, get_counter, each answering `output`.
- good_model_config.txt (base paths are `${TEST_HALF_PLUS_TWO_DIR}` and
  `${TEST_HALF_PLUS_THREE_DIR}` to substitute), bad_model_config.txt, monitoring_config.txt,
  batching_config.txt.
- half_plus_two_model_metadata.json, saved_model_half_plus_two_2_versions_metadata.json: the
  GetModelMetadata responses TF Serving publishes for these models, derived from the SavedModels' own
  SignatureDefs in protobuf's JSON mapping (every field printed), as TF Serving prints them.
  tests/test_testdata.py checks they equal TF Serving's published files when ../shared/fixtures is
  present (an optional cross-check). TF Serving's metadata file for its TF2 model is not made: it
  describes a model exported by an older TensorFlow (no `defaults`), which this TensorFlow cannot
  reproduce; tests compare that model's signature names only.

    python -m labtools testdata [--force]
"""

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path

from utils.paths import BUILD_DIR

TESTDATA_DIR = BUILD_DIR / "testdata"
STAMP_NAME = ".stamp"
VERSION_DIR = "{:08d}"  # TF Serving's test models name their versions 00000123
HALF_PLUS_TWO_CPU = "saved_model_half_plus_two_cpu"
HALF_PLUS_TWO_TF2_CPU = "saved_model_half_plus_two_tf2_cpu"
HALF_PLUS_TWO_2_VERSIONS = "saved_model_half_plus_two_2_versions"
HALF_PLUS_THREE = "saved_model_half_plus_three"
COUNTER = "saved_model_counter"
MODELS = [HALF_PLUS_TWO_CPU, HALF_PLUS_TWO_TF2_CPU, HALF_PLUS_TWO_2_VERSIONS, HALF_PLUS_THREE, COUNTER]
CONFIGS = ["good_model_config.txt", "bad_model_config.txt", "monitoring_config.txt", "batching_config.txt"]
# file: (the model it describes, the name and version its model_spec gives), as TF Serving publishes them
METADATA = {
    "half_plus_two_model_metadata.json": (HALF_PLUS_TWO_CPU, "default", 123),
    "saved_model_half_plus_two_2_versions_metadata.json": (HALF_PLUS_TWO_2_VERSIONS, HALF_PLUS_TWO_2_VERSIONS, 123),
}
ASSET_NAME, ASSET_CONTENTS = "foo.txt", "asset-file-contents"


def stamp_text():
    """What a build depends on: the TensorFlow version and this module's source (read without importing TensorFlow)."""
    source = Path(__file__).read_bytes()
    return f"tensorflow {importlib.metadata.version('tensorflow')}\nlabtools/testdata.py {hashlib.sha256(source).hexdigest()}\n"


def ensure_testdata(target=TESTDATA_DIR, force=False):
    """build/testdata/ as the stamp says it should be, built (staged, then renamed into place) if not; returns it."""
    target = Path(target)
    stamp = stamp_text()

    def current():
        return (target / STAMP_NAME).is_file() and (target / STAMP_NAME).read_text() == stamp

    if not force and current():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build_testdata(staging)
        (staging / STAMP_NAME).write_text(stamp)
        if not force and current():  # another process (a second test run, make bench) put its build in place first
            return target
        if target.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}-stale-", dir=target.parent))
            os.replace(target, stale / target.name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(staging, target)
        except OSError:
            if not current():  # another process won the race between the two renames: keep its build
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_testdata(directory):
    """Every model and config listed in the module docstring, into `directory`."""
    directory = Path(directory)
    version = VERSION_DIR.format
    save_half_plus(directory / HALF_PLUS_TWO_CPU / version(123), b=2.0)
    for number in (123, 124):
        save_half_plus(directory / HALF_PLUS_TWO_2_VERSIONS / version(number), b=2.0, a2_c2=False,
                       classify_x2=True)
    save_half_plus_three(directory / HALF_PLUS_THREE / version(123))
    save_half_plus_two_tf2(directory / HALF_PLUS_TWO_TF2_CPU / version(123))
    save_counter(directory / COUNTER / version(123))
    write_configs(directory)
    for file, (model, name, number) in METADATA.items():
        metadata = model_metadata(directory / model / version(number), name, number)
        (directory / file).write_text(json.dumps(metadata, indent=1) + "\n")
    return directory


def signature_def_map(export_dir):
    """The SignatureDefMap a SavedModel declares, read with TensorFlow's protos (no server code involved)."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((Path(export_dir) / "saved_model.pb").read_bytes())
    (meta_graph,) = saved_model.meta_graphs
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in meta_graph.signature_def.items():
        signature_map.signature_def[key].CopyFrom(signature)
    return signature_map


def model_metadata(export_dir, name, version):
    """A GetModelMetadata response for `signature_def` as JSON: protobuf's JSON mapping, every field printed."""
    from google.protobuf import json_format

    signature_defs = json_format.MessageToDict(signature_def_map(export_dir), preserving_proto_field_name=True,
                                               always_print_fields_with_no_presence=True)
    return {"model_spec": {"name": name, "signature_name": "", "version": str(version)},
            "metadata": {"signature_def": signature_defs}}


# --- TF1 graphs (SavedModelBuilder), as TF Serving's saved_model_half_plus_two.py makes them ---------

def _asset_source(work_dir):
    path = Path(work_dir) / ASSET_NAME
    path.write_text(ASSET_CONTENTS)
    return str(path)


def _tensor_info(tensor, dtype=None, shape=True):
    """A TensorInfo for `tensor`; `dtype`/`shape=False` write what an older exporter declared instead."""
    import tensorflow as tf

    info = tf.compat.v1.saved_model.utils.build_tensor_info(tensor)
    if dtype is not None:
        info.dtype = dtype.as_datatype_enum
    if not shape:
        info.ClearField("tensor_shape")
    return info


def _signature(inputs, outputs, method):
    import tensorflow as tf

    return tf.compat.v1.saved_model.signature_def_utils.build_signature_def(inputs, outputs, method)


def _save_tf1(export_dir, session, signatures, init_op, assets):
    import tensorflow as tf

    tf1 = tf.compat.v1
    builder = tf1.saved_model.Builder(str(export_dir))
    builder.add_meta_graph_and_variables(session, [tf1.saved_model.tag_constants.SERVING],
                                         signature_def_map=signatures, assets_collection=assets, main_op=init_op)
    builder.save()


def _half_plus_graph(tf1, b, work_dir, a2_c2=True):
    """Variables a=0.5, b, c=3; y = a*x + b, y2 = a*x + c, y3 = a*x2 + c over parsed tf.Examples."""
    a = tf1.Variable(0.5, name="a", use_resource=False)
    b = tf1.Variable(b, name="b", use_resource=False)
    c = tf1.Variable(3.0, name="c", use_resource=False)
    serialized = tf1.placeholder(tf1.string, name="tf_example")
    features = tf1.io.parse_example(serialized, {
        "x": tf1.io.FixedLenFeature([1], dtype=tf1.float32),
        "x2": tf1.io.FixedLenFeature([1], dtype=tf1.float32, default_value=[0.0])})
    for parsed in features.values():
        parsed.set_shape([None, 1])  # what parse_example inferred when TF Serving exported these (one per example)
    x = tf1.identity(features["x"], name="x")
    y = tf1.identity(tf1.add(tf1.multiply(a, x), b), name="y")
    y2 = tf1.identity(tf1.add(tf1.multiply(a, x), c), name="y2")
    x2 = tf1.identity(features["x2"], name="x2")
    if a2_c2:
        a, c = tf1.Variable(0.5, name="a2", use_resource=False), tf1.Variable(3.0, name="c2", use_resource=False)
    y3 = tf1.identity(tf1.add(tf1.multiply(a, x2), c), name="y3")
    asset = tf1.constant(_asset_source(work_dir))
    tf1.add_to_collection(tf1.GraphKeys.ASSET_FILEPATHS, asset)
    filename = tf1.Variable(ASSET_NAME, name="filename_tensor", trainable=False, collections=[], use_resource=False)
    return serialized, x, y, y2, x2, y3, filename.assign(ASSET_NAME)


def save_half_plus(export_dir, b, a2_c2=True, classify_x2=False):
    """half_plus_two (b=2) as TF Serving's saved_model_half_plus_two.py exports it (TF1 SavedModelBuilder)."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    sc = tf1.saved_model.signature_constants
    with tempfile.TemporaryDirectory() as work, tf.Graph().as_default(), tf1.Session() as session:
        serialized, x, y, y2, x2, y3, assign_filename = _half_plus_graph(tf1, b, work, a2_c2)

        def regress(inputs, outputs):
            return _signature({sc.REGRESS_INPUTS: _tensor_info(inputs)}, {sc.REGRESS_OUTPUTS: _tensor_info(outputs)},
                              sc.REGRESS_METHOD_NAME)

        def classify(inputs, scores):
            return _signature({sc.CLASSIFY_INPUTS: _tensor_info(inputs)},
                              {sc.CLASSIFY_OUTPUT_SCORES: _tensor_info(scores)}, sc.CLASSIFY_METHOD_NAME)

        signatures = {
            "regress_x_to_y": regress(serialized, y),
            "regress_x_to_y2": regress(serialized, y2),
            "regress_x2_to_y3": regress(x2, y3),
            "classify_x_to_y": classify(serialized, y),
            sc.DEFAULT_SERVING_SIGNATURE_DEF_KEY: _signature({"x": _tensor_info(x)}, {"y": _tensor_info(y)},
                                                             sc.PREDICT_METHOD_NAME),
        }
        if classify_x2:
            signatures["classify_x2_to_y3"] = classify(x2, y3)
        main_op = tf1.group(assign_filename)  # made before the session runs the graph, which then stays as is
        session.run(tf1.global_variables_initializer())
        _save_tf1(export_dir, session, signatures, main_op, tf1.get_collection(tf1.GraphKeys.ASSET_FILEPATHS))
    return Path(export_dir)


def save_half_plus_three(export_dir):
    """half_plus_three as TF Serving keeps it: y = 0.5 * x + 3; `tensorflow/serving/regress` declares DT_FLOAT."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    sc = tf1.saved_model.signature_constants
    with tempfile.TemporaryDirectory() as work, tf.Graph().as_default(), tf1.Session() as session:
        serialized, x, y, _, _, _, assign_filename = _half_plus_graph(tf1, 3.0, work, a2_c2=False)
        signatures = {
            sc.REGRESS_METHOD_NAME: _signature(
                {sc.REGRESS_INPUTS: _tensor_info(serialized, dtype=tf.float32, shape=False)},
                {sc.REGRESS_OUTPUTS: _tensor_info(tf1.identity(y), shape=False)}, sc.REGRESS_METHOD_NAME),
            sc.DEFAULT_SERVING_SIGNATURE_DEF_KEY: _signature(
                {"x": _tensor_info(x, shape=False)}, {"y": _tensor_info(y, shape=False)}, sc.PREDICT_METHOD_NAME),
        }
        main_op = tf1.group(assign_filename)  # made before the session runs the graph, which then stays as is
        session.run(tf1.global_variables_initializer())
        _save_tf1(export_dir, session, signatures, main_op, tf1.get_collection(tf1.GraphKeys.ASSET_FILEPATHS))
    return Path(export_dir)


def save_counter(export_dir):
    """TF Serving's counter model: one float variable behind four predict signatures, each answering `output`."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    sc = tf1.saved_model.signature_constants
    with tf.Graph().as_default(), tf1.Session() as session:
        counter = tf1.Variable(0.0, name="counter", use_resource=False)
        with tf1.name_scope("incr_counter_op"):
            incr_counter = counter.assign_add(1.0)
        delta = tf1.placeholder(tf1.float32, name="delta")
        with tf1.name_scope("incr_counter_by_op"):
            incr_counter_by = counter.assign_add(delta)
        with tf1.name_scope("reset_counter_op"):
            reset_counter = counter.assign(0.0)

        def predict(output, inputs=None):
            return _signature({key: _tensor_info(t) for key, t in (inputs or {}).items()},
                              {"output": _tensor_info(output)}, sc.PREDICT_METHOD_NAME)

        signatures = {"get_counter": predict(counter), "incr_counter": predict(incr_counter),
                      "incr_counter_by": predict(incr_counter_by, {"delta": delta}),
                      "reset_counter": predict(reset_counter)}
        session.run(tf1.global_variables_initializer())
        _save_tf1(export_dir, session, signatures, None, None)
    return Path(export_dir)


# --- TF2 (tf.function signatures) ---------------------------------------------------------------------

def save_half_plus_two_tf2(export_dir):
    """half_plus_two as a TF2 SavedModel: the same six functions as tf.function signatures."""
    import tensorflow as tf

    features = {"x": tf.io.FixedLenFeature([1], dtype=tf.float32),
                "x2": tf.io.FixedLenFeature([1], dtype=tf.float32, default_value=[0.0])}
    examples = tf.TensorSpec([None], tf.string, name="inputs")
    one_float = tf.TensorSpec([1], tf.float32, name="inputs")

    class HalfPlusTwo(tf.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = tf.Variable(0.5), tf.Variable(2.0), tf.Variable(3.0)
            self.asset = tf.saved_model.Asset(_asset_source(asset_dir))

        def parsed(self, serialized):
            return tf.io.parse_example(serialized, features)

        @tf.function(input_signature=[tf.TensorSpec([1], tf.float32, name="x")])
        def predict(self, x=tf.constant([0.0])):  # TF Serving's tf2 export declares this default
            return {"y": self.a * x + self.b}

        @tf.function(input_signature=[examples])
        def regress_xy(self, inputs):
            return {"outputs": self.a * self.parsed(inputs)["x"] + self.b}

        @tf.function(input_signature=[examples])
        def regress_xy2(self, inputs):
            return {"outputs": self.a * self.parsed(inputs)["x"] + self.c}

        @tf.function(input_signature=[one_float])
        def regress_x2y3(self, inputs):
            return {"outputs": self.a * inputs + self.c}

        @tf.function(input_signature=[examples])
        def classify_xy(self, inputs):
            return {"scores": self.a * self.parsed(inputs)["x"] + self.b}

        @tf.function(input_signature=[one_float])
        def classify_x2y3(self, inputs):
            return {"scores": self.a * inputs + self.c}

    with tempfile.TemporaryDirectory() as asset_dir:
        module = HalfPlusTwo()
        signatures = {"serving_default": module.predict, "regress_x_to_y": module.regress_xy,
                      "regress_x_to_y2": module.regress_xy2, "regress_x2_to_y3": module.regress_x2y3,
                      "classify_x_to_y": module.classify_xy, "classify_x2_to_y3": module.classify_x2y3}
        tf.saved_model.save(module, str(export_dir), signatures=signatures)
    return Path(export_dir)


# --- configs ------------------------------------------------------------------------------------------

def write_configs(directory):
    """The four config files, written by the lab's own config writers where it has them."""
    from tensorflow_serving.config import model_server_config_pb2

    from model_server.contract import BatchingParameters
    from utils.deploy import monitoring_config, write_config

    directory = Path(directory)
    config = model_server_config_pb2.ModelServerConfig()
    for name, placeholder in [("half_plus_two", "${TEST_HALF_PLUS_TWO_DIR}"),
                              ("half_plus_three", "${TEST_HALF_PLUS_THREE_DIR}")]:
        model = config.model_config_list.config.add()
        model.name, model.base_path, model.model_platform = name, placeholder, "tensorflow"
    write_config(config, directory / "good_model_config.txt")
    (directory / "bad_model_config.txt").write_text("improperly formatted file")
    write_config(monitoring_config(), directory / "monitoring_config.txt")
    batching = BatchingParameters()
    batching.max_batch_size.value = 128
    batching.batch_timeout_micros.value = 0
    batching.max_enqueued_batches.value = 1000000
    batching.num_batch_threads.value = 8
    write_config(batching, directory / "batching_config.txt")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m labtools testdata", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="rebuild even when the stamp is current")
    options = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(ensure_testdata(force=options.force))
    return 0
