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

    python scripts/tiny_model.py                    # import into the BentoML store as DEFAULT_TAG, with the
                                                    # LoRA adapter, tiny_vl's and tiny_rerank's models
    python scripts/tiny_model.py --tag NAME:VERSION # ... under another tag
    python scripts/tiny_model.py --out DIR          # write the Hugging Face folder to DIR
    python scripts/tiny_model.py --hf-cache DIR --repo-id ORG/NAME --revision SHA
                                                    # lay it out as a Hugging Face hub cache

The store import honours BENTOML_HOME and does nothing if the tag is already there.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

DEFAULT_TAG = "llm-bentos-tiny-dev:v2"
DEFAULT_LORA_TAG = "llm-bentos-tiny-lora:v1"
LORA_RANK = 8
VOCAB_SIZE = 512

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
EOT = "<|eot_id|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, EOT, START_HEADER, END_HEADER, PAD]
# Added as ordinary (non-special) added tokens, as Hermes/Qwen models do: the hermes parser
# looks for these strings in the decoded text.
TOOL_CALL_TOKENS = ["<tool_call>", "</tool_call>"]
# Reasoning parsers (deepseek_r1, qwen3) refuse a vocabulary without these.
THINK_TOKENS = ["<think>", "</think>"]
ADDED_TOKENS = TOOL_CALL_TOKENS + THINK_TOKENS

CORPUS = """\
The quick brown fox jumps over the lazy dog. A small model can still learn the shape of words,
even when it has never seen the world. This corpus is short on purpose: it only has to teach a
tokenizer which letters like to sit together, so that ordinary English text turns into a few
hundred tokens instead of thousands of single bytes.

Hello! How are you today? I am fine, thank you. What is the weather like in Paris, London, Berlin
and Tokyo? It is sunny and warm in the morning, cloudy in the afternoon, and cold at night. Please
tell me a short story about a robot who wanted to become a gardener. Once upon a time, there was
a robot named Pixel who planted seeds, watered flowers and listened to the birds every single day.

You are a helpful assistant. The user asks a question, and the assistant answers politely and
clearly. When a tool is available, the assistant may call a function with arguments written as
JSON, for example {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}.
The tool returns a result, and the assistant uses that result to write the final answer.

Numbers matter too: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14 -1 1e6. Code looks like this:
def add(a, b): return a + b; print("hello, world"); if x > 0 and y < 10: x = y * 2 - 1.
Servers listen on ports, models are loaded from folders, requests come in and responses go out.
Every system message, user message, assistant message and tool message ends with a marker.
"""
CORPUS_REPEATS = 20

# Llama-3 layout. Tools are listed as JSON schemas in a system block; assistant tool calls
# are rendered the hermes way, <tool_call>{"name": ..., "arguments": ...}</tool_call>.
CHAT_TEMPLATE = """\
{{- bos_token }}
{%- if tools %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}
{{- 'You can call these functions. To call one, reply with <tool_call>{"name": <name>, "arguments": <args>}</tool_call>.\\n' }}
{%- for tool in tools %}
{{- (tool | tojson) + '\\n' }}
{%- endfor %}
{{- '<|eot_id|>' }}
{%- endif %}
{%- for message in messages %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
{%- if message['content'] is string %}
{{- message['content'] }}
{%- elif message['content'] %}
{%- for part in message['content'] %}
{%- if part['type'] == 'text' %}{{- part['text'] }}{%- endif %}
{%- endfor %}
{%- endif %}
{%- if message['tool_calls'] %}
{%- for call in message['tool_calls'] %}
{%- set fn = call['function'] if call['function'] is defined else call %}
{{- '<tool_call>{"name": "' + fn['name'] + '", "arguments": ' }}
{%- if fn['arguments'] is string %}{{- fn['arguments'] }}{%- else %}{{- fn['arguments'] | tojson }}{%- endif %}
{{- '}</tool_call>' }}
{%- endfor %}
{%- endif %}
{{- '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""


def build_tokenizer(extra_special_tokens: tuple[str, ...] = (), chat_template: str = CHAT_TEMPLATE):
    """Train the byte-level BPE tokenizer and wrap it as a PreTrainedTokenizerFast.

    `extra_special_tokens` (a vision model's image markers) take places in the same 512-token vocabulary.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(ADDED_TOKENS),
        special_tokens=SPECIAL_TOKENS + list(extra_special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * CORPUS_REPEATS, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        chat_template=chat_template,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


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


def finish_folder(out_dir: Path) -> Path:
    """The touches every tiny model folder gets after save_pretrained."""
    _edit_json(out_dir / "config.json", dtype="float32", torch_dtype="float32")
    # transformers 5 writes its own class name; this one loads under transformers 4 and 5 alike.
    _edit_json(out_dir / "tokenizer_config.json", tokenizer_class="PreTrainedTokenizerFast")
    for path in out_dir.iterdir():
        path.chmod(0o644)  # save_pretrained leaves the weights 0600
    return out_dir


def _edit_json(path: Path, **changes: str) -> None:
    """Set keys in a JSON file; "dtype" is transformers 5's name, "torch_dtype" older readers'."""
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


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


def import_to_bentoml_store(tag: str = DEFAULT_TAG, save=save_hf_folder, what: str = "tiny random Llama chat model") -> str:
    """Save `save(folder)`'s files into the BentoML model store (BENTOML_HOME) under tag; no-op if there."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        pass
    else:
        print(f"{existing.tag} is already in the BentoML model store at {existing.path}, nothing to do")
        return str(existing.tag)
    with bentoml.models.create(
        tag,
        labels={"source": "llm-bentos/scripts/tiny_model.py"},
        metadata={"description": f"{what}, made offline"},
    ) as model:
        save(Path(model.path))
    print(f"saved {model.tag} to the BentoML model store")
    return str(model.tag)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the Hugging Face folder here instead")
    parser.add_argument("--tag", default=DEFAULT_TAG, help=f"BentoML model tag (default {DEFAULT_TAG})")
    parser.add_argument("--hf-cache", type=Path, help="lay the model out as a Hugging Face hub cache here")
    parser.add_argument("--repo-id", help="with --hf-cache: the repository id, ORG/NAME")
    parser.add_argument("--revision", help="with --hf-cache: the 40-hex commit sha")
    args = parser.parse_args(argv)

    if args.hf_cache is not None:
        if not (args.repo_id and args.revision):
            parser.error("--hf-cache needs --repo-id and --revision")
        if not re.fullmatch(r"[0-9a-f]{40}", args.revision):
            parser.error("--revision must be a 40-character lowercase hex commit sha")
        print(f"building the tiny model into the Hugging Face cache {args.hf_cache} ...")
        print(f"wrote {place_in_hf_cache(args.hf_cache, args.repo_id, args.revision)}")
    elif args.out is not None:
        print(f"building the tiny model into {args.out} ...")
        print(f"wrote {save_hf_folder(args.out)}")
    else:
        import tiny_rerank
        import tiny_vl

        print(f"putting the tiny model into the BentoML model store as {args.tag} ...")
        import_to_bentoml_store(args.tag)
        import_to_bentoml_store(DEFAULT_LORA_TAG, save_lora_adapter, "LoRA adapter for the tiny model")
        import_to_bentoml_store(tiny_vl.TAG, tiny_vl.save_hf_folder, "tiny random Idefics3 vision-language model")
        import_to_bentoml_store(tiny_rerank.TAG, tiny_rerank.save_hf_folder, "tiny random BERT reranker")
    return 0


if __name__ == "__main__":
    sys.exit(main())
