"""The score task: the generated tiny-rerank Bento, served for real, answers vLLM's /rerank and /score."""

from __future__ import annotations

import httpx
import pytest
from conftest import ROOT, serve_folder

pytestmark = pytest.mark.serves  # every test here serves a model: not in `make test-quick`

QUERY = "What is the weather like in Paris?"
DOCUMENTS = ["It is sunny and warm in Paris.", "A robot planted seeds.", "Servers listen on ports.", "Hello! How are you today?"]


@pytest.fixture(scope="module")
def rerank_url(bentoml_home):
    with serve_folder(ROOT / "models" / "tiny-rerank", "tiny-rerank", env={"BENTOML_HOME": bentoml_home}, timeout=600) as server:
        yield server.url


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}{path}", json={"model": "tiny-rerank", **body}, timeout=60)


def test_rerank_scores_every_document_best_first_as_score_does(rerank_url):
    reranked = post(rerank_url, "/rerank", {"query": QUERY, "documents": DOCUMENTS})
    assert reranked.status_code == 200, reranked.text
    results = reranked.json()["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    assert all(r["document"]["text"] == DOCUMENTS[r["index"]] for r in results)
    relevance = [r["relevance_score"] for r in results]
    assert relevance == sorted(relevance, reverse=True) and len(set(relevance)) > 1

    scored = post(rerank_url, "/score", {"queries": QUERY, "documents": DOCUMENTS})
    assert scored.status_code == 200, scored.text
    in_order = [d["score"] for d in sorted(scored.json()["data"], key=lambda d: d["index"])]
    by_index = {r["index"]: r["relevance_score"] for r in results}
    assert in_order == pytest.approx([by_index[i] for i in range(len(DOCUMENTS))], abs=1e-5)


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_top_n_on_the_versioned_rerank_routes(rerank_url, path):
    best = post(rerank_url, "/rerank", {"query": QUERY, "documents": DOCUMENTS}).json()["results"][0]
    top = post(rerank_url, path, {"query": QUERY, "documents": DOCUMENTS, "top_n": 1})
    assert top.status_code == 200, top.text
    assert [r["index"] for r in top.json()["results"]] == [best["index"]]
    assert top.json()["results"][0]["relevance_score"] == pytest.approx(best["relevance_score"], abs=1e-5)


def test_v1_score_matches_score(rerank_url):
    body = {"queries": QUERY, "documents": DOCUMENTS[:2]}
    plain, versioned = post(rerank_url, "/score", body), post(rerank_url, "/v1/score", body)
    assert plain.status_code == versioned.status_code == 200, versioned.text
    assert [d["score"] for d in versioned.json()["data"]] == pytest.approx([d["score"] for d in plain.json()["data"]], abs=1e-6)


def test_bad_requests_get_400_and_the_server_keeps_serving(rerank_url):
    missing = post(rerank_url, "/rerank", {"query": QUERY})
    assert missing.status_code == 400 and missing.json()["error"]["message"]
    too_long = post(rerank_url, "/rerank", {"query": "weather " * 600, "documents": DOCUMENTS[:1]})
    assert too_long.status_code == 400 and too_long.json()["error"]["message"]
    assert post(rerank_url, "/rerank", {"query": QUERY, "documents": DOCUMENTS[:2]}).status_code == 200
