"""Which vLLM tool-call and reasoning parsers a model family takes: the one table `make new` reads.

A family is recognised from the model's config (`model_type`) and, where one config type
covers several families (a Qwen2 config is used by Qwen2.5 and by DeepSeek-R1's distills),
from its Hugging Face id. The first rule that matches wins. Every parser name here is
checked against vLLM's own registries by tests/test_new_model.py.

`make new` applies a tool-call parser only when the model's chat template renders tools,
and a `<think>` reasoning parser (deepseek_r1, qwen3) only when the tokenizer or template
has `</think>`: Qwen3's instruct-only releases, for example, never think.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.json `model_type`s of the family
    id_pattern: str = ""  # and, when set, a regular expression the lowercased id must match
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None


FAMILIES = (
    #      family                model types                          id must match           tools          reasoning
    Family("deepseek-r1",        ("qwen2", "llama", "deepseek_v3"),    r"deepseek-r1",         None,          "deepseek_r1"),
    Family("deepseek-v3",        ("deepseek_v3",),                     r"",                    "deepseek_v3", None),
    Family("gpt-oss",            ("gpt_oss",),                         r"",                    "openai",      "openai_gptoss"),
    Family("qwen3",              ("qwen3", "qwen3_moe"),               r"",                    "hermes",      "qwen3"),
    Family("qwen3-coder",        ("qwen3_moe",),                       r"coder",               "qwen3_coder", None),
    Family("qwen2.5",            ("qwen2", "qwen2_moe"),               r"",                    "hermes",      None),
    Family("llama4",             ("llama4",),                          r"",                    "llama4_pythonic", None),
    Family("llama3",             ("llama",),                           r"llama-3|llama3",      "llama3_json", None),
    Family("mistral",            ("mistral", "mixtral"),               r"",                    "mistral",     None),
    Family("granite",            ("granite", "granitemoe"),            r"",                    "granite",     None),
    Family("phi4-mini",          ("phi3",),                            r"phi-4-mini",          "phi4_mini_json", None),
    Family("internlm2",          ("internlm2",),                       r"",                    "internlm",    None),
    Family("glm4.5",             ("glm4_moe",),                        r"",                    "glm45",       "glm45"),
)
# Qwen3-Coder must win over plain Qwen3: rules with an id pattern are tried first.
RULES = tuple(sorted(FAMILIES, key=lambda f: not f.id_pattern))


def family_of(model_type: str, model_id: str) -> Family | None:
    """The first family whose config type and id pattern match; None for families without parsers."""
    for family in RULES:
        if model_type in family.model_types and re.search(family.id_pattern, model_id.lower()):
            return family
    return None
