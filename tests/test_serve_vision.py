"""Image input: the generated tiny-vl Bento, served for real, takes images as OpenAI image_url parts."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from scripts.tiny import vl as tiny_vl
from conftest import ROOT, serve_folder

pytestmark = pytest.mark.serves  # every test here serves a model: not in `make test-quick`

# Idefics3 puts each image's tokens between <fake_token_around_image><global-img> and <fake_token_around_image>.
TOKENS_PER_IMAGE = tiny_vl.IMAGE_TOKENS + 3


@pytest.fixture(scope="module")
def vl_url(bentoml_home):
    with serve_folder(ROOT / "models" / "tiny-vl", "tiny-vl", env={"BENTOML_HOME": bentoml_home}, timeout=600) as server:
        yield server.url


def png_data_url(width: int, height: int) -> str:
    """A PNG the test draws: a colour gradient, as a data: URL."""
    from PIL import Image

    image = Image.new("RGB", (width, height))
    image.putdata([(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat(url: str, *images: str) -> httpx.Response:
    content = [{"type": "text", "text": "What is in this picture?"}]
    content += [{"type": "image_url", "image_url": {"url": image}} for image in images]
    body = {"model": "tiny-vl", "messages": [{"role": "user", "content": content}], "max_tokens": 8, "temperature": 0}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def test_chat_with_an_image_gets_a_reply_and_counts_the_image_tokens(vl_url):
    text_only, one, two = chat(vl_url), chat(vl_url, png_data_url(80, 60)), chat(vl_url, png_data_url(80, 60), png_data_url(30, 90))
    for response in (text_only, one, two):
        assert response.status_code == 200, response.text
    assert one.json()["choices"][0]["message"]["content"]
    assert one.json()["usage"]["completion_tokens"] > 0
    prompt = [r.json()["usage"]["prompt_tokens"] for r in (text_only, one, two)]
    assert prompt[1] - prompt[0] == TOKENS_PER_IMAGE
    assert prompt[2] - prompt[0] == 2 * TOKENS_PER_IMAGE


def test_a_broken_image_gets_a_400_and_the_server_keeps_serving(vl_url):
    broken = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n not really a png").decode()
    response = chat(vl_url, broken)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]
    too_many = chat(vl_url, *[png_data_url(20, 20)] * 3)  # the entry allows 2 images per prompt
    assert too_many.status_code == 400 and "image" in too_many.json()["error"]["message"].lower()
    assert chat(vl_url, png_data_url(40, 40)).status_code == 200
