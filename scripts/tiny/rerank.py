"""A tiny random BERT cross-encoder (reranker), made offline, for tests of /rerank and /score.

The catalog's ``tiny-rerank`` entry serves it: vLLM runs a ``*ForSequenceClassification``
model with one label as a cross-encoder, scoring each (query, document) pair in one
forward pass. Its scores are meaningless (random weights) but deterministic.

What it makes, deterministically:

* a WordPiece tokenizer (at most 512 tokens) of common.py's corpus's words and characters, with BERT's
  ``[CLS] query [SEP] document [SEP]`` pair template and token type ids;
* a 2-layer float32 ``BertForSequenceClassification`` with ``num_labels=1`` (hidden 256,
  4 heads of 64), weights drawn after ``torch.manual_seed(0)``.
"""

from __future__ import annotations

from pathlib import Path

from scripts.tiny import common

TAG = "llm-bentos-tiny-rerank:v1"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MAX_LENGTH = 512


def build_vocab() -> dict[str, int]:
    """WordPiece vocabulary, in a fixed order: specials, the corpus's words, its characters alone and as ``##`` suffixes.

    Made by hand because the tokenizers library's WordPiece trainer orders tokens differently from run to run.
    """
    from tokenizers import normalizers, pre_tokenizers

    text = normalizers.BertNormalizer(lowercase=True).normalize_str(common.CORPUS)
    words = sorted({word for word, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(text)})
    chars = sorted(set("".join(words)))
    tokens = SPECIAL_TOKENS + [w for w in words if len(w) > 1] + chars + ["##" + c for c in chars]
    return {token: index for index, token in enumerate(tokens[: common.VOCAB_SIZE])}


def build_tokenizer():
    """The WordPiece tokenizer as a BERT-style PreTrainedTokenizerFast (pairs get token type ids)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = build_vocab()
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=MAX_LENGTH, clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def build_config(tokenizer):
    import torch
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_LENGTH, type_vocab_size=2, num_labels=1,
        pad_token_id=tokenizer.pad_token_id, architectures=["BertForSequenceClassification"], dtype=torch.float32,
    )


def save_hf_folder(out_dir: Path) -> Path:
    """Write config, weights and tokenizer to out_dir."""
    import torch
    from transformers import BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = BertForSequenceClassification(build_config(tokenizer)).to(torch.float32).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return common.finish_folder(out_dir)
