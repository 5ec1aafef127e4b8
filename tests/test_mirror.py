"""`make mirror`: one laptop's TF Hub cache, served in the bucket layout, is what the others download."""

import functools
import http.server
import threading

import pytest
import tensorflow as tf

from labtools import mirror
from utils import catalog


class TinyClassifier(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32)])
    def __call__(self, images):
        return tf.tile(tf.reduce_mean(images, axis=[1, 2, 3])[:, None], [1, 1001])


@pytest.fixture
def instructor_cache(tmp_path, monkeypatch):
    """An instructor's cache holding ResNet v2 50 (a stand-in with its interface), not 101."""
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "instructor"))
    resnet50 = catalog.CATALOGS["tfhub"][0]
    tf.saved_model.save(TinyClassifier(), str(catalog.cached_model_dir(resnet50)))
    return resnet50


def test_the_mirror_holds_a_tarball_of_each_cached_model_in_the_bucket_layout(instructor_cache, tmp_path):
    written = mirror.build_mirror(tmp_path / "mirror")
    assert [p.relative_to(tmp_path / "mirror").as_posix() for p in written] == [
        "google/imagenet/resnet_v2_50/classification/5.tar.gz"]


def test_a_learner_downloads_from_the_mirror(instructor_cache, tmp_path, monkeypatch):
    mirror_dir = tmp_path / "mirror"
    mirror.build_mirror(mirror_dir)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror_dir))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "learner"))
        monkeypatch.setenv("LAB_TFHUB_MIRROR", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setattr(catalog, "TFHUB_BUCKET_URL", "http://127.0.0.1:9/{path}.tar.gz")
        assert catalog.tfhub_reachable()
        assert not catalog.is_prepared(instructor_cache)
        catalog.prepare_model(instructor_cache)
        assert catalog.is_prepared(instructor_cache)
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_an_empty_cache_is_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(mirror, "MIRROR_DIR", tmp_path / "mirror")
    with pytest.raises(SystemExit) as exit_:
        mirror.main(["--host", "127.0.0.1", "--port", "0"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == ("error: no TF Hub model is in the cache: run `make models CATALOG=tfhub` "
                                       "first, on a network that reaches TF Hub.\n")
