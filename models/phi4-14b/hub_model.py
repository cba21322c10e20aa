"""BentoML's HuggingFaceModel, with a refused download said in one line.

Copied verbatim into every generated model folder from templates/hub_model.py by
scripts/generate.py.
"""

from __future__ import annotations

import os

import bentoml
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError


class HubModel(bentoml.models.HuggingFaceModel):
    """BentoML's HuggingFaceModel, whose refused download (BentoML fetches it before the
    service starts) stops `bentoml serve` with one line saying what to fix."""

    def resolve(self, base_path=None) -> str:
        try:
            return super().resolve(base_path)
        except HfHubHTTPError as exc:
            raise bentoml.exceptions.BentoMLException(hub_refusal(self, exc)) from exc


def hub_refusal(model: HubModel, exc: HfHubHTTPError) -> str:
    where = f"{model.model_id} at revision {model.revision} on {model.endpoint or 'https://huggingface.co'}"
    if isinstance(exc, GatedRepoError):
        if not os.environ.get("HF_TOKEN"):
            return f"{where} is gated and HF_TOKEN is not set: set it to a token that was granted access to it"
        return f"{where} is gated: set HF_TOKEN to a token that was granted access to it"
    if isinstance(exc, RevisionNotFoundError):
        return f"{where}: the Hub has no revision {model.revision}"
    if isinstance(exc, RepositoryNotFoundError):
        return f"{where}: no such model, or a private one: check the id, or set HF_TOKEN"
    return f"{where}: download failed: {str(exc).splitlines()[0]}"
