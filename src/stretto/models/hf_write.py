"""Write a transformers LM as a diffusion LM is published: LLaDA's or SDAR's config.json, names, shards, tokenizer.

The writing half of `hf_load`: what `stretto train text --layout llada|sdar` exports its trained models with and
what `bench.tiny_published` writes its random test checkpoints with. LLaDA (Nie et al. 2025) publishes an
OLMo-style config.json (`d_model`, `n_layers`, ...) and OLMo parameter names, renamed here by this file's own
table (the loader reads the other direction with `hf_families`' table, so a test that writes with one and
loads with the other checks both); SDAR (Cheng et al. 2025) publishes Qwen3's keys and names verbatim plus
`block_size` and `mask_token_id`. Weights go in safetensors shards with model.safetensors.index.json, the
tokenizer as a character-level tokenizer.json built with `tokenizers`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

# Host (transformers) name -> LLaDA's published name.
TO_LLADA = [
    (r"^model\.embed_tokens\.", "model.transformer.wte."),
    (r"^model\.norm\.", "model.transformer.ln_f."),
    (r"^lm_head\.", "model.transformer.ff_out."),
    (r"^model\.layers\.(\d+)\.input_layernorm\.", r"model.transformer.blocks.\1.attn_norm."),
    (r"^model\.layers\.(\d+)\.self_attn\.q_proj\.", r"model.transformer.blocks.\1.q_proj."),
    (r"^model\.layers\.(\d+)\.self_attn\.k_proj\.", r"model.transformer.blocks.\1.k_proj."),
    (r"^model\.layers\.(\d+)\.self_attn\.v_proj\.", r"model.transformer.blocks.\1.v_proj."),
    (r"^model\.layers\.(\d+)\.self_attn\.o_proj\.", r"model.transformer.blocks.\1.attn_out."),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.", r"model.transformer.blocks.\1.ff_norm."),
    (r"^model\.layers\.(\d+)\.mlp\.gate_proj\.", r"model.transformer.blocks.\1.ff_proj."),
    (r"^model\.layers\.(\d+)\.mlp\.up_proj\.", r"model.transformer.blocks.\1.up_proj."),
    (r"^model\.layers\.(\d+)\.mlp\.down_proj\.", r"model.transformer.blocks.\1.ff_out."),
]


@dataclass(frozen=True)
class Size:
    """A published-layout model's architecture (the default is the smallest that decodes, which the tests use)."""

    hidden: int = 32
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    max_len: int = 64
    mlp: int = 0  # MLP width; 0: 2 x hidden

    def __post_init__(self):
        for name in ("hidden", "layers", "heads", "kv_heads", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"Size.{name} must be >= 1, got {getattr(self, name)}")
        if self.mlp < 0:
            raise ValueError(f"Size.mlp must be >= 0 (0: 2 x hidden), got {self.mlp}")
        if self.hidden % (2 * self.heads) or self.heads % self.kv_heads:
            raise ValueError(
                f"Size.hidden ({self.hidden}) must split into {self.heads} heads of even width and heads into "
                f"kv_heads ({self.kv_heads}) groups"
            )

    @property
    def mlp_width(self) -> int:
        return self.mlp or 2 * self.hidden


@dataclass(frozen=True)
class TokenIds:
    """The embedding rows and the special token ids a published config.json names."""

    vocab: int
    eos: int
    pad: int
    mask: int

    def __post_init__(self):
        for name in ("eos", "pad", "mask"):
            if not 0 <= getattr(self, name) < self.vocab:
                raise ValueError(f"TokenIds.{name} = {getattr(self, name)} is outside the vocabulary [0, {self.vocab})")


def llada_config(size: Size, ids: TokenIds) -> dict:
    """LLaDA's published config.json (OLMo-style keys) for a Llama-shaped model of this size."""
    return {
        "model_type": "llada",
        "architectures": ["LLaDAModelLM"],
        "auto_map": {"AutoModel": "modeling_llada.LLaDAModelLM"},
        "d_model": size.hidden,
        "n_layers": size.layers,
        "n_heads": size.heads,
        "n_kv_heads": size.heads,
        "mlp_hidden_size": size.mlp_width,
        "embedding_size": ids.vocab,
        "vocab_size": ids.vocab,
        "max_sequence_length": size.max_len,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "mask_token_id": ids.mask,
        "eos_token_id": ids.eos,
        "pad_token_id": ids.pad,
        "weight_tying": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "activation_type": "silu",
        "block_type": "llama",
        "layer_norm_type": "rms",
        "rope": True,
        "use_cache": False,
    }


def llama_host_config(size: Size, ids: TokenIds) -> dict:
    """The LlamaConfig keys of the model `llada_config` describes, written out independently of the loader."""
    return {
        "vocab_size": ids.vocab,
        "hidden_size": size.hidden,
        "intermediate_size": size.mlp_width,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "num_key_value_heads": size.heads,
        "max_position_embeddings": size.max_len,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
    }


def qwen_keys(size: Size, ids: TokenIds, bos: int | None = None) -> dict:
    """Qwen2 / Qwen3 config keys, as Dream, Fast-dLLM v2 and SDAR publish them."""
    bos = ids.eos if bos is None else bos
    return {
        "hidden_size": size.hidden,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "num_key_value_heads": size.kv_heads,
        "intermediate_size": size.mlp_width,
        "vocab_size": ids.vocab,
        "max_position_embeddings": size.max_len,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": size.max_len,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": ids.eos,
        "pad_token_id": ids.pad,
        "mask_token_id": ids.mask,
        "torch_dtype": "float32",
    }


def sdar_config(size: Size, ids: TokenIds, block_size: int) -> dict:
    """SDAR's published config.json: Qwen3's keys plus its block size and mask token."""
    if block_size < 1:
        raise ValueError(f"an SDAR model needs block_size >= 1, got {block_size}")
    sdar = {"model_type": "sdar", "architectures": ["SDARForCausalLM"], "block_size": block_size}
    return sdar | {"head_dim": size.hidden // size.heads} | qwen_keys(size, ids)


def to_llada_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LlamaForCausalLM state dict under LLaDA's published (OLMo) parameter names."""
    out = {}
    for name, value in tensors.items():
        for pattern, replacement in TO_LLADA:
            if re.match(pattern, name):
                name = re.sub(pattern, replacement, name)
                break
        out[name] = value
    return out


def write_tokenizer(folder: Path, chars: str, specials: list[str], unk: str = "<unk>") -> None:
    """A character-level tokenizer.json: the specials (ids 0, 1, ...), one token per character, then `unk`
    (unless it is one of the specials)."""
    tokens = specials + list(chars) + ([] if unk in specials else [unk])
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials + ([] if unk in specials else [unk]))
    tok.save(str(folder / "tokenizer.json"))


def write_shards(folder: Path, tensors: dict[str, torch.Tensor], shards: int = 2) -> None:
    """safetensors shards (names split evenly, in sorted order) and the index naming which tensor lives where."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        part = names[i * len(names) // shards : (i + 1) * len(names) // shards]
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in part}, folder / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}}
    (folder / "model.safetensors.index.json").write_text(json.dumps({**index, "weight_map": weight_map}))
