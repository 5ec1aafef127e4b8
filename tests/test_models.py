"""Catalog, the EfficientNet-Lite port, the serving module and its exports."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import REFERENCE_DIR, shared_reference
from model_server.saved_model_bundle import SavedModelBundle
from utils import catalog
from utils.errors import LabError
from utils.images import IMAGES_DIR, get_image_list, load_batch, read_image_bytes
from utils.predictions import top_k
from efficientnet_port.pth import PthFormatError, load_state_dict

CAT_CLASSES = {"Egyptian cat", "tabby", "tiger cat", "Persian cat", "Siamese cat"}


def test_unknown_catalog_is_one_clear_sentence():
    with pytest.raises(LabError, match=r"Unknown catalog 'resnet': choose one of 'auto', 'tfhub', 'offline'\."):
        catalog.resolve_catalog("resnet")


def test_auto_falls_back_to_offline_and_says_so(monkeypatch, capsys):
    monkeypatch.delenv("LAB_CATALOG", raising=False)
    monkeypatch.setattr(catalog, "tfhub_answers", lambda *timeout: False)
    assert catalog.resolve_catalog("auto") == "offline"
    assert capsys.readouterr().out == ("Catalog 'auto': TF Hub did not answer within 3 s, using 'offline' "
                                       "(EfficientNet-Lite0 and Lite1 from PyPI wheels).\n")


def test_auto_prefers_tfhub_when_it_answers(monkeypatch, capsys):
    monkeypatch.delenv("LAB_CATALOG", raising=False)
    monkeypatch.setattr(catalog, "tfhub_answers", lambda *timeout: True)
    assert catalog.resolve_catalog("auto") == "tfhub"
    assert "using 'tfhub'" in capsys.readouterr().out


@pytest.mark.parametrize("chosen", ["offline", "tfhub"])
def test_lab_catalog_decides_auto_without_probing(monkeypatch, capsys, chosen):
    monkeypatch.setenv("LAB_CATALOG", chosen)
    monkeypatch.setattr(catalog, "tfhub_answers", lambda *timeout: pytest.fail("TF Hub was probed"))
    assert catalog.resolve_catalog("auto") == chosen
    assert capsys.readouterr().out.startswith(f"Catalog 'auto': LAB_CATALOG is set, using '{chosen}' (")


def test_a_bad_lab_catalog_is_one_clear_sentence(monkeypatch):
    monkeypatch.setenv("LAB_CATALOG", "resnet")
    with pytest.raises(LabError, match=r"^LAB_CATALOG='resnet' is not a catalog: set it to one of 'tfhub', "
                                       r"'offline', or unset it\.$"):
        catalog.resolve_catalog("auto")


def test_tfhub_probe_is_false_when_unreachable(monkeypatch):
    monkeypatch.setattr(catalog, "TFHUB_PROBE_URL", "http://127.0.0.1:9/")
    assert catalog.tfhub_answers(timeout=1.0) is False


def test_failed_tfhub_download_is_clear_and_leaves_no_partial_model(tmp_path, monkeypatch):
    # Every source on a closed loopback port: the model's handle, the original lab's bucket, no mirror.
    monkeypatch.setattr(catalog, "TFHUB_BUCKET_URL", "http://127.0.0.1:9/{path}.tar.gz")
    monkeypatch.delenv(catalog.TFHUB_MIRROR_ENV, raising=False)
    assert all("127.0.0.1:9/" in handle for _, handle in catalog.tfhub_sources(
        catalog.CatalogModel("ResNet v2 50", "resnet", 50, "https://127.0.0.1:9/resnet_v2_50/classification/5")))
    unreachable = catalog.CatalogModel("ResNet v2 50", "resnet", 50, "https://127.0.0.1:9/resnet_v2_50/classification/5")
    with pytest.raises(LabError, match="use catalog 'offline' or 'auto'"):
        catalog.prepare_model(unreachable, cache=tmp_path)
    assert list((tmp_path / "tfhub").iterdir()) == []


def test_served_names_do_not_pretend_to_be_resnets(offline_models):
    assert {(m.model_name, m.version) for m in offline_models} == {("efficientnet_lite", 224), ("efficientnet_lite", 240)}
    assert {(m.model_name, m.version) for m in catalog.CATALOGS["tfhub"]} == {("resnet", 50), ("resnet", 101)}


def test_pth_reader_rejects_other_files(tmp_path):
    not_pth = tmp_path / "weights.pth"
    not_pth.write_bytes(b"PK\x03\x04 a zip, not a legacy pickle")
    with pytest.raises(PthFormatError, match="not a legacy PyTorch file"):
        load_state_dict(not_pth)


def test_pth_reader_detects_truncation(tmp_path, offline_models):
    pth = catalog.wheel_weights_path(offline_models[0])
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(pth.read_bytes()[:-1000])
    with pytest.raises(PthFormatError, match="truncated"):
        load_state_dict(truncated)


@pytest.fixture(scope="module")
def lite0(offline_models):
    return catalog.load_model(offline_models[0])


def test_offline_model_has_the_tfhub_interface(lite0):
    logits = lite0(tf.zeros([2, 224, 224, 3]))
    assert logits.shape == (2, 1001) and logits.dtype == tf.float32
    assert np.all(np.argmax(logits, axis=-1) != 0), "background never ranks first"


def test_lite0_reproduces_published_imagenet_behaviour(lite0, labels):
    paths = [IMAGES_DIR / "chelsea.jpg", IMAGES_DIR / "coffee.jpg", IMAGES_DIR / "rocket.jpg"]
    first = [rows[0][0] for rows in top_k(lite0(load_batch(paths)).numpy(), labels)]
    assert first[0] in CAT_CLASSES
    assert first[1] == "espresso"
    assert first[2] in {"missile", "projectile"}


def test_lite0_on_grace_hopper_is_military_uniform_as_published(lite0, labels):
    """Optional cross-check on TensorFlow's own example photo, which the repository does not hold."""
    grace_hopper = shared_reference(REFERENCE_DIR / "grace_hopper.jpg")
    (rows,) = top_k(lite0(load_batch([grace_hopper])).numpy(), labels)
    assert rows[0][0] == "military uniform"


def test_serving_preprocess_matches_python_preprocessing(serving_modules, labels):
    paths = get_image_list()
    raw = tf.constant([read_image_bytes(p) for p in paths])
    for module in serving_modules.values():
        served = module.predict_labels(raw)
        python = top_k(module(load_batch(paths)).numpy(), labels)
        assert [[n.decode() for n in row] for row in served["labels"].numpy()] == [[n for n, _ in r] for r in python]
        np.testing.assert_allclose(served["probabilities"].numpy(), [[p for _, p in r] for r in python], atol=1e-5)


@pytest.mark.parametrize("payload, message", [
    (b"plain text, not an image", "Unknown image file format: send a JPEG or a PNG"),
    (b"GIF89a a GIF, which the lab's signature does not take", "Unknown image file format: send a JPEG or a PNG"),
    (b"\xff\xd8\xff but a broken JPEG", "Invalid JPEG data"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x00\x02\x00\x00\x00\x02 but broken", "Invalid PNG"),
], ids=["text", "gif", "broken jpeg", "broken png"])
def test_serving_preprocess_rejects_non_images(serving_modules, payload, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serving_modules[224].predict_labels(tf.constant([payload]))


def test_every_export_runs_both_signatures_in_the_tf1_session_loader(exported_models, serving_modules):
    paths = get_image_list()
    images = load_batch(paths).numpy()
    raw = np.array([read_image_bytes(p) for p in paths], dtype=object)
    for version, module in serving_modules.items():
        bundle = SavedModelBundle(exported_models / "efficientnet_lite" / str(version))
        try:
            assert {"serving_default", "serving_preprocess"} <= set(bundle.signature_defs)
            logits = bundle.run("serving_default", {"x": images})["output_0"]
            np.testing.assert_allclose(logits, module(images).numpy(), rtol=1e-4, atol=1e-4)
            top5 = bundle.run("serving_preprocess", {"raw_images": raw})
            assert top5["labels"].shape == (len(paths), 5) and top5["probabilities"].shape == (len(paths), 5)
        finally:
            bundle.close()


def test_session_loader_check_catches_the_keras3_pitfall(tmp_path):
    """A Keras 3 model kept on a tf.Module saves, but TF Serving's loader cannot find its variables."""

    class Wrapper(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = tf.keras.Sequential([tf.keras.Input([3]), tf.keras.layers.Dense(2)])

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def __call__(self, x):
            return self.model(x)

    wrapper = Wrapper()
    tf.saved_model.save(wrapper, str(tmp_path / "1"), signatures={"serving_default": wrapper.__call__})
    tf.saved_model.load(str(tmp_path / "1"))  # TF2 loading works...
    with pytest.raises(tf.errors.FailedPreconditionError, match="Could not find variable"):
        bundle = SavedModelBundle(tmp_path / "1")  # ...TF Serving's does not
        bundle.run("serving_default", {"x": np.zeros([1, 3], np.float32)})
