"""Build a tiny random Llama chat model fully offline, for tests and demos.

The catalog's ``tiny-dev`` entry serves this model so that the whole path
(BentoML model store -> service -> vLLM -> OpenAI API, tool calling included)
can be exercised on a laptop CPU in seconds, without the Hugging Face Hub.
Its answers are gibberish: the weights are random.

What it makes, deterministically (the same command writes byte-identical files):

* a byte-level BPE tokenizer (vocab 512) trained on a small English corpus
  embedded below, with Llama-3 special tokens, ``<tool_call>``/``</tool_call>``
  for the hermes tool parser, and a Llama-3-style chat template;
* a 2-layer float32 ``LlamaForCausalLM`` (hidden 256, 4 heads of 64) with
  weights drawn after ``torch.manual_seed(0)``.

Usage:

    python -m scripts.tiny                    # import into the BentoML store as DEFAULT_TAG, with the
                                              # LoRA adapter and vl.py's and rerank.py's models
    python -m scripts.tiny --tag NAME:VERSION # ... under another tag
    python -m scripts.tiny --out DIR          # write the Hugging Face folder to DIR
    python -m scripts.tiny --hf-cache DIR --repo-id ORG/NAME --revision SHA
                                              # lay it out as a Hugging Face hub cache

The store import honours BENTOML_HOME and does nothing if the tag is already there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from scripts.tiny.common import EOS, build_tokenizer, finish_folder

DEFAULT_TAG = "llm-bentos-tiny-dev:v2"
DEFAULT_LORA_TAG = "llm-bentos-tiny-lora:v1"
LORA_RANK = 8

def build_config(tokenizer):
    """The LlamaConfig: 2 layers, hidden 256, 4 heads of 64 (vLLM's CPU attention needs head_dim >= 64)."""
    import torch
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype=torch.float32,
    )


def build_model(tokenizer):
    """A LlamaForCausalLM with random weights drawn after torch.manual_seed(0)."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    config = build_config(tokenizer)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(EOS)],
        pad_token_id=tokenizer.pad_token_id,
        max_length=2048,
    )
    return model


def save_hf_folder(out_dir: Path) -> Path:
    """Write the Hugging Face model folder (config, weights, tokenizer, generation config) to out_dir."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return finish_folder(out_dir)


def save_lora_adapter(out_dir: Path) -> Path:
    """A seeded random PEFT LoRA adapter (rank 8, q_proj and v_proj) for the tiny model."""
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = build_config(build_tokenizer())
    generator = torch.Generator().manual_seed(1)
    weights = {}
    for layer in range(config.num_hidden_layers):
        for proj in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            out = config.hidden_size if proj == "q_proj" else config.num_key_value_heads * config.head_dim
            weights[f"{prefix}.lora_A.weight"] = torch.randn(LORA_RANK, config.hidden_size, generator=generator) * 0.1
            weights[f"{prefix}.lora_B.weight"] = torch.randn(out, LORA_RANK, generator=generator) * 0.5
    save_file(weights, out_dir / "adapter_model.safetensors")
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": LORA_RANK, "lora_alpha": 2 * LORA_RANK,
        "lora_dropout": 0.0, "bias": "none", "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": DEFAULT_TAG, "fan_in_fan_out": False,
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    for path in out_dir.iterdir():
        path.chmod(0o644)
    return out_dir


def place_in_hf_cache(cache_dir: Path, repo_id: str, revision_sha: str) -> Path:
    """Lay the folder out as a Hugging Face hub cache entry for repo_id at commit revision_sha.

    Writes ``models--ORG--NAME/snapshots/<sha>/`` and ``refs/main`` (the sha, no newline), which is
    what ``huggingface_hub.snapshot_download(repo_id, revision=<sha or "main">, cache_dir=...)``
    reads when offline (HF_HUB_OFFLINE=1). Returns the snapshot path.
    """
    if not re.fullmatch(r"[0-9a-f]{40}", revision_sha):
        raise ValueError(f"revision_sha must be a 40-character lowercase hex commit hash, got {revision_sha!r}")
    repo_dir = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = save_hf_folder(repo_dir / "snapshots" / revision_sha)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision_sha)
    return snapshot
