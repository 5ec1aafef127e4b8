"""The tfhub catalog downloads through tensorflow_hub's resolver, end to end against a loopback server.

The server holds a tiny SavedModel with the TF Hub classifiers' interface ([N, 224, 224, 3] float32 to
[N, 1001] logits), tarred like the original lab's bucket. Its three sources are pointed at it: the
workshop mirror (LAB_TFHUB_MIRROR), the TF Hub handle (the model's source) and the bucket template.
"""

import hashlib
import io
import os
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import tensorflow as tf
import tensorflow_hub as hub

from utils import catalog
from utils.errors import LabError

MODEL_PATH = "google/imagenet/resnet_v2_50/classification/5"


class TinyClassifier(tf.Module):
    """Averages the pixels of each image and repeats the mean as `classes` logits.

    It also carries 256 KiB of random weights, which do not compress, so that half of its tarball
    ends inside the variables file: a deterministic place to truncate.
    """

    def __init__(self, classes):
        super().__init__()
        self.classes = classes
        self.weights = tf.Variable(tf.random.stateless_uniform([65536], seed=[1, 2]))

    @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32)])
    def __call__(self, images):
        return tf.tile(tf.reduce_mean(images, axis=[1, 2, 3])[:, None], [1, self.classes])


def saved_model_tarball(directory, classes):
    """A .tar.gz of a TinyClassifier SavedModel, laid out like TF Hub's tarballs (./saved_model.pb)."""
    tf.saved_model.save(TinyClassifier(classes), str(directory))
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        tar.add(directory, arcname=".")
    return archive.getvalue()


@pytest.fixture(scope="module")
def classifier_tarball(tmp_path_factory):
    return saved_model_tarball(tmp_path_factory.mktemp("classifier") / "model", classes=1001)


@pytest.fixture(scope="module")
def wrong_signature_tarball(tmp_path_factory):
    return saved_model_tarball(tmp_path_factory.mktemp("ten_classes") / "model", classes=10)


def serve(body):
    def reply(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    return reply


def serve_truncated(body):
    """Announce the whole body, send half of it, close the connection."""
    def reply(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[:len(body) // 2])
    return reply


def say_nothing(seconds):
    """Accept the request, then send nothing for `seconds` (a source that hangs)."""
    def reply(handler):
        handler.server.hang_over.wait(seconds)
    return reply


def redirect(location):
    def reply(handler):
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return reply


def refuse(code):
    return lambda handler: handler.send_error(code)


class Loopback:
    """An HTTP server on 127.0.0.1: `routes` maps a path to a reply, `requests` logs what was asked."""

    def __init__(self):
        self.routes, self.requests = {}, []
        loopback = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                loopback.requests.append(self.path)
                loopback.routes.get(urlsplit(self.path).path, refuse(404))(self)

            def log_message(self, *args):
                """Quiet: the test reads `requests` instead."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.hang_over = threading.Event()  # set on exit: a hanging reply ends with the server
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.server.hang_over.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


MIRROR = f"/mirror/{MODEL_PATH}.tar.gz"
HANDLE = f"/{MODEL_PATH}"
BUCKET = f"/tfhub-modules/{MODEL_PATH}.tar.gz"


@pytest.fixture
def loopback(monkeypatch):
    """The loopback server, with the mirror and the bucket pointed at it; nothing set from outside."""
    with Loopback() as server:
        monkeypatch.setenv(catalog.TFHUB_MIRROR_ENV, f"{server.url}/mirror")
        monkeypatch.setattr(catalog, "TFHUB_BUCKET_URL", f"{server.url}/tfhub-modules/{{path}}.tar.gz")
        monkeypatch.delenv("TFHUB_CACHE_DIR", raising=False)
        monkeypatch.delenv("TFHUB_DOWNLOAD_PROGRESS", raising=False)
        yield server


@pytest.fixture
def loopback_model(loopback):
    """A tfhub catalog model whose TF Hub handle is on the loopback server."""
    return catalog.CatalogModel("ResNet v2 50", "resnet", 50, loopback.url + HANDLE)


def tfhub_cache_entries(cache):
    """What the lab's TF Hub cache holds: verified models only, no lock, temp or staging entries."""
    return sorted(path.name for path in (cache / "tfhub").iterdir())


def sha1(text):
    return hashlib.sha1(text.encode("utf8")).hexdigest()


def test_tfhub_handle_redirected_to_a_tarball_downloads_into_tf_hubs_cache(
        loopback, loopback_model, classifier_tarball, tmp_path):
    loopback.routes[HANDLE] = redirect("/kaggle/resnet.tar.gz")
    loopback.routes["/kaggle/resnet.tar.gz"] = serve(classifier_tarball)
    saved_model_dir = catalog.prepare_model(loopback_model, cache=tmp_path)
    assert f"{HANDLE}?tf-hub-format=compressed" in loopback.requests, "asked the tensorflow_hub way"
    assert saved_model_dir == tmp_path / "tfhub" / sha1(loopback_model.source)
    assert tfhub_cache_entries(tmp_path) == [sha1(loopback_model.source)]


def test_cached_model_loads_with_hub_load_of_its_handle_without_downloading_again(
        loopback, loopback_model, classifier_tarball, tmp_path):
    loopback.routes[MIRROR] = serve(classifier_tarball)
    catalog.prepare_model(loopback_model, cache=tmp_path)
    loopback.routes.clear()
    asked_before = len(loopback.requests)
    logits = catalog.load_model(loopback_model, cache=tmp_path)(tf.fill([3, 224, 224, 3], 0.5))
    assert logits.shape == (3, 1001) and float(logits[0, 0]) == pytest.approx(0.5)
    assert hub.resolve(loopback_model.source) == str(tmp_path / "tfhub" / sha1(loopback_model.source))
    assert len(loopback.requests) == asked_before


def test_a_refusing_source_is_skipped_for_the_next(loopback, loopback_model, classifier_tarball, tmp_path):
    loopback.routes.update({MIRROR: refuse(403), HANDLE: serve(classifier_tarball)})
    catalog.prepare_model(loopback_model, cache=tmp_path)
    assert [urlsplit(r).path for r in loopback.requests] == [MIRROR, HANDLE]
    assert tfhub_cache_entries(tmp_path) == [sha1(loopback_model.source)]


def test_the_original_labs_bucket_is_the_last_source(loopback, loopback_model, classifier_tarball, tmp_path):
    loopback.routes[BUCKET] = serve(classifier_tarball)
    catalog.prepare_model(loopback_model, cache=tmp_path)
    assert [urlsplit(r).path for r in loopback.requests] == [MIRROR, HANDLE, BUCKET]


def test_download_shows_tf_hubs_progress(loopback, loopback_model, classifier_tarball, tmp_path, capsys):
    loopback.routes[MIRROR] = serve(classifier_tarball)
    catalog.prepare_model(loopback_model, cache=tmp_path)
    assert f"Downloaded {loopback.url}{MIRROR}, Total size: " in capsys.readouterr().out


@pytest.mark.parametrize("bad_reply, answer", [
    (serve_truncated, r"\S+ does not appear to be a valid module\."),  # TF Hub's word for it
    (lambda tarball: serve(b"<html>Sign in to Kaggle</html>"), r"\S+ does not appear to be a valid module\."),
    (None, r"a SavedModel mapping float32 images \[2, 224, 224, 3\] to \[2, 10\], not to \[2, 1001\] logits"),
], ids=["truncated body", "not gzip", "wrong signature"])
def test_a_bad_download_is_one_sentence_naming_every_source_and_leaves_the_cache_clean(
        loopback, loopback_model, classifier_tarball, wrong_signature_tarball, tmp_path, bad_reply, answer):
    loopback.routes[MIRROR] = bad_reply(classifier_tarball) if bad_reply else serve(wrong_signature_tarball)
    with pytest.raises(LabError) as raised:
        catalog.prepare_model(loopback_model, cache=tmp_path)
    url = loopback.url
    assert raised.match(
        rf"^Could not download ResNet v2 50: the workshop mirror \({url}{MIRROR}\) answered {answer}; "
        rf"TF Hub \({url}{HANDLE}\) answered HTTP 404 Not Found; "
        rf"the original lab's bucket \({url}{BUCKET}\) answered HTTP 404 Not Found; with no internet, set "
        r"LAB_TFHUB_MIRROR to a workshop mirror or use catalog 'offline' or 'auto'\.$")
    assert tfhub_cache_entries(tmp_path) == []


def test_the_catalogs_resnet_caches_under_lab_cache_dir(loopback, classifier_tarball, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "lab-cache"))
    loopback.routes[MIRROR] = serve(classifier_tarball)
    resnet50 = catalog.CATALOGS["tfhub"][0]
    saved_model_dir = catalog.prepare_model(resnet50)
    assert saved_model_dir == tmp_path / "lab-cache" / "tfhub" / sha1("https://tfhub.dev/" + MODEL_PATH)
    assert hub.resolve(resnet50.source) == str(saved_model_dir), "TFHUB_CACHE_DIR points at the lab's cache"


def test_a_local_directory_works_as_the_mirror(loopback, classifier_tarball, tmp_path, monkeypatch):
    tarball = tmp_path / "usb-stick" / f"{MODEL_PATH}.tar.gz"
    tarball.parent.mkdir(parents=True)
    tarball.write_bytes(classifier_tarball)
    monkeypatch.setenv(catalog.TFHUB_MIRROR_ENV, str(tmp_path / "usb-stick"))
    resnet50 = catalog.CATALOGS["tfhub"][0]
    catalog.prepare_model(resnet50, cache=tmp_path / "cache")
    assert tfhub_cache_entries(tmp_path / "cache") == [sha1(resnet50.source)]
    assert loopback.requests == []


def test_a_local_mirror_without_the_model_is_named_in_the_error(loopback, loopback_model, tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.TFHUB_MIRROR_ENV, str(tmp_path / "empty-stick"))
    missing = rf"{tmp_path}/empty-stick/{MODEL_PATH}\.tar\.gz"
    with pytest.raises(LabError, match=rf"the workshop mirror \({missing}\) answered .*No such file or directory"):
        catalog.prepare_model(loopback_model, cache=tmp_path / "cache")
    assert tfhub_cache_entries(tmp_path / "cache") == []


def test_a_source_that_says_nothing_times_out_and_the_next_one_is_tried(
        loopback, loopback_model, classifier_tarball, tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "DOWNLOAD_TIMEOUT_SECONDS", 1)
    loopback.routes[MIRROR] = say_nothing(10)
    loopback.routes[HANDLE] = serve(classifier_tarball)
    catalog.prepare_model(loopback_model, cache=tmp_path)
    assert tfhub_cache_entries(tmp_path) == [sha1(loopback_model.source)]


def test_sources_that_all_say_nothing_are_one_sentence_naming_the_timeout(
        loopback, loopback_model, tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "DOWNLOAD_TIMEOUT_SECONDS", 1)
    for path in (MIRROR, HANDLE, BUCKET):
        loopback.routes[path] = say_nothing(10)
    with pytest.raises(LabError) as raised:
        catalog.prepare_model(loopback_model, cache=tmp_path)
    assert raised.match(rf"^Could not download ResNet v2 50: the workshop mirror \(\S+\) answered nothing for 1 s; "
                        rf"TF Hub \(\S+\) answered nothing for 1 s; the original lab's bucket \(\S+\) answered "
                        r"nothing for 1 s; with no internet, ")
    assert tfhub_cache_entries(tmp_path) == []


def test_a_download_killed_midway_leaves_staging_that_the_next_download_removes(
        loopback, loopback_model, classifier_tarball, tmp_path):
    cache = tmp_path / "tfhub"
    dead = max_pid() + 1  # no process has this pid
    stale = cache / f"{catalog.STAGING_PREFIX}{dead}-abc123"
    live = cache / f"{catalog.STAGING_PREFIX}{os.getppid()}-def456"  # a download still under way
    for staging in (stale, live):
        (staging / "partial").mkdir(parents=True)
    loopback.routes[MIRROR] = serve(classifier_tarball)
    catalog.prepare_model(loopback_model, cache=tmp_path)
    assert tfhub_cache_entries(tmp_path) == sorted([live.name, sha1(loopback_model.source)])


def max_pid():
    return int(Path("/proc/sys/kernel/pid_max").read_text())
