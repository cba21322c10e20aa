"""The embed task: /v1/embeddings and BentoML's `embed` API of the served tiny-embed Bento."""

from __future__ import annotations

import httpx
import pytest
from conftest import ROOT, serve_folder
from openai import OpenAI

pytestmark = pytest.mark.serves  # every test here serves a model: not in `make test-quick`

HIDDEN_SIZE = 256  # scripts/tiny/llama.py


@pytest.fixture(scope="module")
def embed_server(bentoml_home):
    with serve_folder(ROOT / "models" / "tiny-embed", "tiny-embed", env={"BENTOML_HOME": bentoml_home}) as server:
        yield server


def test_one_vector_per_input_of_the_hidden_size(embed_server):
    client = OpenAI(base_url=f"{embed_server.url}/v1", api_key="unused", max_retries=0)
    texts = ["The capital of France is Paris.", "Robots like tea.", "The capital of France is Paris."]
    result = client.embeddings.create(model="tiny-embed", input=texts)
    vectors = [d.embedding for d in sorted(result.data, key=lambda d: d.index)]
    assert len(vectors) == 3 and all(len(v) == HIDDEN_SIZE for v in vectors)
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    again = client.embeddings.create(model="tiny-embed", input=texts[:1]).data[0].embedding
    assert again == pytest.approx(vectors[0], abs=1e-6)


def test_bentoml_embed_api_matches_openai_route(embed_server):
    response = httpx.post(f"{embed_server.url}/embed", json={"texts": ["Robots like tea."]}, timeout=60)
    assert response.status_code == 200, response.text
    client = OpenAI(base_url=f"{embed_server.url}/v1", api_key="unused", max_retries=0)
    expected = client.embeddings.create(model="tiny-embed", input=["Robots like tea."]).data[0].embedding
    assert response.json()[0] == pytest.approx(expected, abs=1e-6)


def test_embed_rejects_bad_input(embed_server):
    response = httpx.post(f"{embed_server.url}/v1/embeddings", json={"model": "tiny-embed", "input": ["x " * 3000]}, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["message"]
