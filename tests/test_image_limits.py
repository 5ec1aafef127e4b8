"""The lab's own model, served, refuses decompression bombs before decoding them (notebook 02's limits).

The bombs are PNGs built in a few lines (`utils.images.png_of_zeros`, shown in notebook 02): under a
megabyte each, they claim 12000x12000 or 20000x20000 pixels (1.6 or 4.5 GiB as float32). The test never
decodes them; the server must not either.
"""

import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from server_harness import running_server
from utils.images import MAX_BATCH_IMAGES, MAX_IMAGE_SIDE, png_of_zeros
from utils.paths import IMAGES_DIR
from utils.payloads import b64_body

MODEL_NAME = "efficientnet_lite"
PEAK_RSS_LIMIT_KIB = 3 << 20  # 3 GiB: what a learner's laptop can spare
LIMIT_MESSAGE = f"over the limit of {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}"


@pytest.fixture(scope="module")
def bombs():
    return {side: png_of_zeros(side) for side in (12000, 20000)}


@pytest.fixture(scope="module")
def lab_server(exported_models, tmp_path_factory):
    """A server on the lab's exported model (its latest version, 240, as TF Serving loads one model)."""
    flags = [f"--model_name={MODEL_NAME}", f"--model_base_path={exported_models / MODEL_NAME}"]
    with running_server(tmp_path_factory.mktemp("limits"), flags, wait_for=[(MODEL_NAME, [240])]) as (
            server, rest_url, _):
        yield server, f"{rest_url}/v1/models/{MODEL_NAME}"


def predict(model_url, images):
    return requests.post(f"{model_url}:predict", json=b64_body(images), timeout=120)


def peak_rss_kib(pid):
    """VmHWM: the most resident memory the process has ever had."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def test_the_bombs_are_small_and_claim_more_than_the_limit(bombs):
    for side, bomb in bombs.items():
        assert len(bomb) < 2 << 20 and side > MAX_IMAGE_SIDE
        assert struct.unpack(">II", bomb[16:24]) == (side, side)


@pytest.mark.parametrize("sides", [(12000,), (20000,), (12000,) * 8], ids=["12000", "20000", "eight 12000"])
def test_each_bomb_request_is_a_400_naming_the_limit(lab_server, bombs, sides):
    _, model_url = lab_server
    response = predict(model_url, [bombs[side] for side in sides])
    assert response.status_code == 400
    assert LIMIT_MESSAGE in response.json()["error"]


def test_four_bomb_requests_at_once_leave_the_server_serving_under_3_gib(lab_server, bombs):
    server, model_url = lab_server
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: predict(model_url, [bombs[20000]] * 2), range(4)))
    assert [r.status_code for r in responses] == [400] * 4
    assert predict(model_url, [(IMAGES_DIR / "chelsea.jpg").read_bytes()]).status_code == 200
    assert peak_rss_kib(server.process.pid) < PEAK_RSS_LIMIT_KIB


def test_a_batch_over_the_limit_is_a_400_naming_it(lab_server):
    _, model_url = lab_server
    jpeg = (IMAGES_DIR / "coffee.jpg").read_bytes()
    assert predict(model_url, [jpeg] * MAX_BATCH_IMAGES).status_code == 200
    response = predict(model_url, [jpeg] * (MAX_BATCH_IMAGES + 1))
    assert response.status_code == 400
    assert f"at most {MAX_BATCH_IMAGES} images" in response.json()["error"]


def test_an_unknown_format_is_a_400(lab_server):
    _, model_url = lab_server
    response = predict(model_url, [b"GIF89a not what the lab accepts"])
    assert response.status_code == 400
    assert "Unknown image file format: send a JPEG or a PNG." in response.json()["error"]
