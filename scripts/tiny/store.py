"""Every tiny offline model by its BentoML tag, and putting one into the model store."""

from __future__ import annotations

from scripts.tiny import llama, rerank, vl
from scripts.tiny.common import import_to_bentoml_store

MAKERS = {  # tag: (writes the Hugging Face folder, what it is)
    llama.DEFAULT_TAG: (llama.save_hf_folder, "tiny random Llama chat model"),
    llama.DEFAULT_LORA_TAG: (llama.save_lora_adapter, "LoRA adapter for the tiny model"),
    vl.TAG: (vl.save_hf_folder, "tiny random Idefics3 vision-language model"),
    rerank.TAG: (rerank.save_hf_folder, "tiny random BERT reranker"),
}


def import_tiny_model(tag: str = llama.DEFAULT_TAG) -> str:
    """The tiny model with this tag in the BentoML model store (BENTOML_HOME): its tag; a no-op if there."""
    if tag not in MAKERS:
        raise KeyError(f"{tag}: not a tiny model; tiny models: {', '.join(MAKERS)}")
    save, what = MAKERS[tag]
    return import_to_bentoml_store(tag, save, what)
