"""Tiny random checkpoints written exactly as LLaDA, Dream, Fast-dLLM v2, SDAR and DiffusionGemma are published.

What the published-layout tests load and what `stretto bench text --peers` runs the peer engines on (no hub
here: every model is built from its config, with random weights). Each builder makes a reference transformers
model with random weights (the independent forward the tests compare against), then writes a folder the way
the family publishes it (with `stretto.models.hf_write`, the writer trained models are exported with too): its
config.json keys and model_type, its parameter names (LLaDA's OLMo names, renamed by the writer's own table, not
the loader's), the weights in two shards with model.safetensors.index.json, and a tokenizer.json built locally
with `tokenizers`. `Size` sets the width, depth and context (default: the
smallest that decodes, which the tests use).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

from stretto.models.hf_write import (
    Size,
    TokenIds,
    llada_config,
    llama_host_config,
    qwen_keys,
    sdar_config,
    to_llada_names,
    write_shards,
)
from stretto.models.hf_write import write_tokenizer as _write_tokenizer

__all__ = ["Size", "layout", "reference_model", "write_checkpoint", "write_diffusion_gemma", "write_shards"]

SPECIALS = ["<|endoftext|>", "<|mdm_mask|>", "<unk>"]
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 =+:"
EOT, MASK = 0, 1
QWEN_EOT, QWEN_MASK = len(CHARS), len(CHARS) + 1  # Qwen2's special tokens follow its vocabulary
VOCAB = 48  # the embedding is padded past the tokenizer's 43 tokens, as the published models' are
IDS = TokenIds(VOCAB, eos=EOT, pad=EOT, mask=MASK)
TEST_SIZE = Size()  # the smallest that decodes
GEMMA_SIZE = Size(max_len=128)


def write_tokenizer(folder: Path, chars: str = CHARS) -> None:
    """A character-level tokenizer.json: the specials, then one token per character."""
    _write_tokenizer(folder, chars, SPECIALS)


def write_qwen_tokenizer(folder: Path) -> None:
    """Dream's tokenizer files: a byte-level BPE vocab.json + merges.txt (one token per character, space as Ġ),
    its special tokens after the vocabulary, and a tokenizer_config.json naming a class that needs remote code."""
    vocab = {c: i for i, c in enumerate(CHARS.replace(" ", "\u0120"))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    flags = {"special": True, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}
    added = {str(QWEN_EOT + i): {"content": t, **flags} for i, t in enumerate(["<|endoftext|>", "<|mask|>"])}
    config = {
        "tokenizer_class": "DreamTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "added_tokens_decoder": added,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "mask_token": "<|mask|>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def layout(family: str, size: Size = TEST_SIZE) -> dict:
    """The family's published config.json and the host class (and its config) the reference forward runs on."""
    if family == "llada":  # OLMo-style keys; the host config is written out separately
        return {
            "config": llada_config(size, IDS),
            "host": ("LlamaForCausalLM", "LlamaConfig"),
            "host_config": llama_host_config(size, IDS),
        }
    if family == "Dream":
        dream_ids = {"bos_token_id": QWEN_EOT, "eos_token_id": QWEN_EOT, "pad_token_id": QWEN_EOT}
        return {
            "config": {"model_type": "Dream", "architectures": ["DreamModel"], **qwen_keys(size, IDS)}
            | dream_ids
            | {"mask_token_id": QWEN_MASK},
            "host": ("Qwen2ForCausalLM", "Qwen2Config"),
            "tokenizer": write_qwen_tokenizer,
        }
    if family == "Fast_dLLM_Qwen":
        return {
            "config": {"model_type": "Fast_dLLM_Qwen", "architectures": ["Fast_dLLM_QwenForCausalLM"], "bd_size": 4}
            | qwen_keys(size, IDS),
            "host": ("Qwen2ForCausalLM", "Qwen2Config"),
        }
    if family == "sdar":
        return {
            "config": sdar_config(size, IDS, block_size=4),
            "host": ("Qwen3ForCausalLM", "Qwen3Config"),
        }
    raise ValueError(f"unknown published family {family!r}; allowed: {', '.join(FAMILIES)}")


FAMILIES = ("llada", "Dream", "Fast_dLLM_Qwen", "sdar")
LAYOUTS = {family: layout(family) for family in FAMILIES}  # at the default (test) size
SHIFTED = {"Dream", "Fast_dLLM_Qwen"}
BLOCK = {"Fast_dLLM_Qwen": 4, "sdar": 4}


def reference_model(family: str, seed: int = 0, size: Size = TEST_SIZE):
    """The reference: the family's transformers host class with random weights, peaky enough to decode."""
    spec = layout(family, size)
    cls_name, config_name = spec["host"]
    drop = ("model_type", "architectures", "torch_dtype")
    keys = spec.get("host_config") or {k: v for k, v in spec["config"].items() if k not in drop}
    config = getattr(transformers, config_name)(**keys, initializer_range=0.3)
    torch.manual_seed(seed)
    return getattr(transformers, cls_name)(config).eval()


def write_checkpoint(
    family: str,
    folder: Path,
    seed: int = 0,
    config_edits: dict | None = None,
    chars: str = CHARS,
    size: Size = TEST_SIZE,
):
    """Write the family's published layout to folder; return the reference model holding the same weights."""
    ref = reference_model(family, seed, size)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.detach().clone() for name, value in ref.state_dict().items()}
    write_shards(folder, to_llada_names(tensors) if family == "llada" else tensors)
    spec = layout(family, size)
    config = {**spec["config"], **(config_edits or {})}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    spec.get("tokenizer", lambda f: write_tokenizer(f, chars))(folder)
    return ref


def write_diffusion_gemma(folder: Path, seed: int = 0, size: Size = GEMMA_SIZE, canvas_length: int = 8):
    """A tiny DiffusionGemma (MoE text layers, a one-layer vision tower) in two shards; returns the reference."""
    head_dim = size.hidden // size.heads
    text = {
        "vocab_size": VOCAB,
        "hidden_size": size.hidden,
        "intermediate_size": 2 * size.hidden,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "num_key_value_heads": size.kv_heads,
        "head_dim": head_dim,
        "global_head_dim": 2 * head_dim,
        "num_experts": 4,
        "top_k_experts": 2,
        "moe_intermediate_size": size.hidden // 2,
        "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention"] * (size.layers // 2)
        + ["full_attention"] * (size.layers % 2),
        "max_position_embeddings": size.max_len,
    }
    vision = {"model_type": "gemma4_vision", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    vision |= {"num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8}
    config = transformers.DiffusionGemmaConfig(
        text_config=text,
        vision_config=vision,
        canvas_length=canvas_length,
        boi_token_id=44,
        eoi_token_id=45,
        image_token_id=46,
    )
    torch.manual_seed(seed)
    ref = transformers.DiffusionGemmaForBlockDiffusion(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    tied = set(ref.all_tied_weights_keys)
    write_shards(folder, {k: v.detach().clone() for k, v in ref.state_dict().items() if k not in tied})
    (folder / "config.json").write_text(config.to_json_string())
    write_tokenizer(folder)
    return ref
