"""`python -m labtools testdata`: TF Serving's test models, built by the repository (issue 19).

The models are checked here in process, against the functions TF Serving's test data computes; the
server tests use them through conftest.TFSERVING_TESTDATA. Where TF Serving's own copies are on this
machine (../shared/fixtures, beside the project's own checkouts), optional cross-checks compare the
built files with them: same SignatureDefs, same published metadata, same configs, same answers.
"""

import json

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from conftest import SHARED_TFSERVING_TESTDATA, TFSERVING_TESTDATA, shared_reference
from labtools import testdata
from model_server.protos import BatchingParameters, MonitoringConfig

# (model directory, version) of every SavedModel the tests use
SAVED_MODELS = [(testdata.HALF_PLUS_TWO_CPU, 123), (testdata.HALF_PLUS_TWO_TF2_CPU, 123),
                (testdata.HALF_PLUS_TWO_2_VERSIONS, 123), (testdata.HALF_PLUS_TWO_2_VERSIONS, 124),
                (testdata.HALF_PLUS_THREE, 123), (testdata.COUNTER, 123)]
CONFIG_TYPES = {"good_model_config.txt": model_server_config_pb2.ModelServerConfig,
                "monitoring_config.txt": MonitoringConfig, "batching_config.txt": BatchingParameters}


def export_dir(root, model, version):
    return root / model / f"{version:08d}"


def example(**features):
    message = tf.train.Example()
    for key, value in features.items():
        message.features.feature[key].float_list.value.append(value)
    return message.SerializeToString()


def run_tf1(path, fetches, feeds):
    """Run a TF1 SavedModel's tensors by name in a fresh session (its main op run, as a server loads it)."""
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
        return session.run(fetches, feeds)


def half_plus_two_answers(path):
    """y, y2, y3 of a half_plus_two-style TF1 model for x = 1, 2, 5 (and x2 = 4 on the last example)."""
    examples = [example(x=1.0), example(x=2.0), example(x=5.0, x2=4.0)]
    return run_tf1(path, ["y:0", "y2:0", "y3:0"], {"tf_example:0": examples})


def test_layout_and_names_are_tf_servings():
    for model, version in SAVED_MODELS:
        assert (export_dir(TFSERVING_TESTDATA, model, version) / "saved_model.pb").is_file(), (model, version)
        assert (export_dir(TFSERVING_TESTDATA, model, version) / "variables" / "variables.index").is_file()
    for name in [*testdata.CONFIGS, *testdata.METADATA]:
        assert (TFSERVING_TESTDATA / name).is_file(), name


@pytest.mark.parametrize("model,version", [(testdata.HALF_PLUS_TWO_CPU, 123), (testdata.HALF_PLUS_TWO_2_VERSIONS, 123),
                                           (testdata.HALF_PLUS_TWO_2_VERSIONS, 124)])
def test_half_plus_two_computes_what_tf_serving_publishes(model, version):
    y, y2, y3 = half_plus_two_answers(export_dir(TFSERVING_TESTDATA, model, version))
    np.testing.assert_array_equal(y, [[2.5], [3.0], [4.5]])  # 0.5 * x + 2
    np.testing.assert_array_equal(y2, [[3.5], [4.0], [5.5]])  # 0.5 * x + 3
    np.testing.assert_array_equal(y3, [[3.0], [3.0], [5.0]])  # 0.5 * x2 + 3, x2 defaulting to 0
    assert (export_dir(TFSERVING_TESTDATA, model, version) / "assets" / "foo.txt").read_text() == "asset-file-contents"


def test_half_plus_three_computes_half_plus_three():
    path = export_dir(TFSERVING_TESTDATA, testdata.HALF_PLUS_THREE, 123)
    y = run_tf1(path, "y:0", {"tf_example:0": [example(x=1.0), example(x=2.0), example(x=5.0)]})
    np.testing.assert_array_equal(y, [[3.5], [4.0], [5.5]])
    signatures = testdata.signature_def_map(path).signature_def
    assert set(signatures) == {"serving_default", "tensorflow/serving/regress"}
    regress_input = signatures["tensorflow/serving/regress"].inputs["inputs"]
    assert (regress_input.name, regress_input.dtype) == ("tf_example:0", tf.float32.as_datatype_enum)


def test_half_plus_two_signatures_are_predict_classify_and_regress_over_examples():
    signatures = testdata.signature_def_map(export_dir(TFSERVING_TESTDATA, testdata.HALF_PLUS_TWO_CPU, 123)).signature_def
    assert {key: s.method_name for key, s in signatures.items()} == {
        "serving_default": "tensorflow/serving/predict", "classify_x_to_y": "tensorflow/serving/classify",
        "regress_x_to_y": "tensorflow/serving/regress", "regress_x_to_y2": "tensorflow/serving/regress",
        "regress_x2_to_y3": "tensorflow/serving/regress"}
    for key in ("classify_x_to_y", "regress_x_to_y", "regress_x_to_y2"):
        (tensor,) = signatures[key].inputs.values()
        assert (tensor.name, tensor.dtype) == ("tf_example:0", tf.string.as_datatype_enum), key


def test_tf2_half_plus_two_answers_through_its_signatures():
    loaded = tf.saved_model.load(str(export_dir(TFSERVING_TESTDATA, testdata.HALF_PLUS_TWO_TF2_CPU, 123)))
    assert float(loaded.signatures["serving_default"](x=tf.constant([2.0]))["y"][0]) == 3.0
    examples = tf.constant([example(x=2.0)])
    assert float(loaded.signatures["regress_x_to_y"](inputs=examples)["outputs"][0, 0]) == 3.0
    assert float(loaded.signatures["regress_x_to_y2"](inputs=examples)["outputs"][0, 0]) == 4.0
    assert float(loaded.signatures["classify_x_to_y"](inputs=examples)["scores"][0, 0]) == 3.0


def test_counter_keeps_its_state_within_a_session():
    path = export_dir(TFSERVING_TESTDATA, testdata.COUNTER, 123)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
        signatures = meta_graph.signature_def

        def call(name, **feeds):
            inputs = {signatures[name].inputs[key].name: value for key, value in feeds.items()}
            return float(session.run(signatures[name].outputs["output"].name, inputs))

        assert [call("incr_counter"), call("incr_counter"), call("incr_counter_by", delta=3.0),
                call("get_counter"), call("reset_counter")] == [1.0, 2.0, 5.0, 5.0, 0.0]


def test_configs_parse_as_tf_serving_reads_them():
    good = text_format.Parse((TFSERVING_TESTDATA / "good_model_config.txt").read_text(),
                             model_server_config_pb2.ModelServerConfig())
    assert [(m.name, m.base_path) for m in good.model_config_list.config] == [
        ("half_plus_two", "${TEST_HALF_PLUS_TWO_DIR}"), ("half_plus_three", "${TEST_HALF_PLUS_THREE_DIR}")]
    with pytest.raises(text_format.ParseError):
        text_format.Parse((TFSERVING_TESTDATA / "bad_model_config.txt").read_text(),
                          model_server_config_pb2.ModelServerConfig())
    monitoring = text_format.Parse((TFSERVING_TESTDATA / "monitoring_config.txt").read_text(), MonitoringConfig())
    assert (monitoring.prometheus_config.enable, monitoring.prometheus_config.path) == (
        True, "/monitoring/prometheus/metrics")
    batching = text_format.Parse((TFSERVING_TESTDATA / "batching_config.txt").read_text(), BatchingParameters())
    assert batching.max_batch_size.value == 128 and batching.num_batch_threads.value == 8


def test_metadata_files_are_the_models_own_signature_defs():
    for file, (model, name, version) in testdata.METADATA.items():
        published = json.loads((TFSERVING_TESTDATA / file).read_text())
        assert published["model_spec"] == {"name": name, "signature_name": "", "version": str(version)}
        assert set(published["metadata"]["signature_def"]["signature_def"]) == set(
            testdata.signature_def_map(export_dir(TFSERVING_TESTDATA, model, version)).signature_def)


def test_a_current_stamp_means_no_rebuild(tmp_path, monkeypatch):
    builds = []

    def build(directory):
        builds.append(directory)
        (directory / "built").write_text(str(len(builds)))

    monkeypatch.setattr(testdata, "build_testdata", build)
    target = tmp_path / "testdata"
    assert testdata.ensure_testdata(target) == target
    assert testdata.ensure_testdata(target) == target
    assert len(builds) == 1 and (target / "built").read_text() == "1"
    (target / testdata.STAMP_NAME).write_text("tensorflow 0.0\n")  # another TensorFlow, or another testdata.py
    testdata.ensure_testdata(target)
    assert len(builds) == 2 and (target / "built").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["testdata"], "no staging directory left behind"


def test_a_failed_build_leaves_the_previous_one_in_place(tmp_path, monkeypatch):
    target = tmp_path / "testdata"
    target.mkdir()
    (target / "old").write_text("kept")

    def fail(directory):
        raise RuntimeError("export failed")

    monkeypatch.setattr(testdata, "build_testdata", fail)
    with pytest.raises(RuntimeError, match="export failed"):
        testdata.ensure_testdata(target)
    assert (target / "old").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["testdata"]


# --- optional cross-checks against TF Serving's own copies (skipped where ../shared is absent) ----------

@pytest.mark.parametrize("model,version", SAVED_MODELS)
def test_built_signature_defs_equal_tf_servings(model, version):
    theirs = export_dir(shared_reference(SHARED_TFSERVING_TESTDATA), model, version)
    assert testdata.signature_def_map(export_dir(TFSERVING_TESTDATA, model, version)) == \
        testdata.signature_def_map(theirs)


@pytest.mark.parametrize("file", sorted(testdata.METADATA))
def test_built_metadata_equals_tf_servings_published_json(file):
    theirs = shared_reference(SHARED_TFSERVING_TESTDATA) / file
    assert json.loads((TFSERVING_TESTDATA / file).read_text()) == json.loads(theirs.read_text())


def test_tf2_signature_names_equal_tf_servings_published_json():
    theirs = shared_reference(SHARED_TFSERVING_TESTDATA) / "saved_model_half_plus_two_tf2_2_versions_metadata.json"
    ours = testdata.signature_def_map(export_dir(TFSERVING_TESTDATA, testdata.HALF_PLUS_TWO_TF2_CPU, 123))
    assert set(ours.signature_def) == set(json.loads(theirs.read_text())["metadata"]["signature_def"]["signature_def"])


@pytest.mark.parametrize("file", sorted(CONFIG_TYPES))
def test_built_configs_equal_tf_servings(file):
    theirs = shared_reference(SHARED_TFSERVING_TESTDATA) / file
    message_type = CONFIG_TYPES[file]
    assert text_format.Parse((TFSERVING_TESTDATA / file).read_text(), message_type()) == \
        text_format.Parse(theirs.read_text(), message_type())
    assert (TFSERVING_TESTDATA / "bad_model_config.txt").read_text() == \
        (SHARED_TFSERVING_TESTDATA / "bad_model_config.txt").read_text()


@pytest.mark.parametrize("model,version", [(testdata.HALF_PLUS_TWO_CPU, 123), (testdata.HALF_PLUS_TWO_2_VERSIONS, 124)])
def test_built_models_answer_as_tf_servings(model, version):
    theirs = export_dir(shared_reference(SHARED_TFSERVING_TESTDATA), model, version)
    for ours_answer, their_answer in zip(half_plus_two_answers(export_dir(TFSERVING_TESTDATA, model, version)),
                                         half_plus_two_answers(theirs)):
        np.testing.assert_array_equal(ours_answer, their_answer)
