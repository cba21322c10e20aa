"""What the tiny offline models share: the byte-level BPE tokenizer, its corpus and chat template,
the last touches of a saved folder, and the import into the BentoML model store.

llama.py, vl.py and rerank.py build on this module; it imports none of them.
"""

from __future__ import annotations

import json
from pathlib import Path

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


def import_to_bentoml_store(tag: str, save, what: str) -> str:
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
        labels={"source": "llm-bentos/scripts/tiny"},
        metadata={"description": f"{what}, made offline"},
    ) as model:
        save(Path(model.path))
    print(f"saved {model.tag} to the BentoML model store")
    return str(model.tag)
