"""The published diffusion-LM checkpoint families stretto hosts on transformers' classes: one table.

Each family names its `model_type` (config.json), the transformers class that already implements its
architecture, how its config keys and parameter names map onto that class, its attention pattern
(bidirectional or block-causal), whether its logits are shifted by one (models adapted from an AR LM score
token i at position i - 1) and where its mask token and block size come from. Facts: the families' public
config and modeling files (LLaDA, Nie et al. 2025; Dream 7B, Ye et al. 2025; Fast-dLLM v2, Wu et al. 2025;
SDAR, Cheng et al. 2025).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import transformers

# Config keys that describe the published code, not the architecture (the host class has its own).
_CODE_KEYS = ("model_type", "architectures", "auto_map", "torch_dtype", "dtype", "transformers_version")


def _same_keys(published: dict) -> dict:
    """Qwen2 / Qwen3 layouts: the published keys are the host's; keys it does not know ride along inertly."""
    return {k: v for k, v in published.items() if k not in _CODE_KEYS}


def _llada_keys(published: dict) -> dict:
    """LLaDA's OLMo-style config -> LlamaConfig keys."""
    for key, allowed in (("block_type", "llama"), ("activation_type", "silu"), ("layer_norm_type", "rms")):
        if published.get(key, allowed) != allowed:
            raise ValueError(f"LLaDA config {key}={published[key]!r} has no Llama host; allowed: {allowed!r}")
    for key in ("include_bias", "include_qkv_bias", "alibi", "input_emb_norm", "attention_layer_norm"):
        if published.get(key):
            raise ValueError(f"LLaDA config {key}=true has no Llama host; allowed: false")
    d = published
    return {
        "vocab_size": d.get("embedding_size") or d["vocab_size"],  # the embedding is padded past the tokenizer
        "hidden_size": d["d_model"],
        "intermediate_size": d["mlp_hidden_size"],
        "num_hidden_layers": d["n_layers"],
        "num_attention_heads": d["n_heads"],
        "num_key_value_heads": d.get("n_kv_heads") or d["n_heads"],
        "max_position_embeddings": d.get("max_sequence_length", 4096),
        "rms_norm_eps": d.get("rms_norm_eps", 1e-5),
        "rope_theta": d.get("rope_theta", 10000.0),
        "tie_word_embeddings": bool(d.get("weight_tying", False)),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        **{k: d[k] for k in ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id") if k in d},
    }


_LLADA_BLOCK = r"^model\.transformer\.blocks\.(\d+)\."
_LLADA_RENAMES = (
    (r"^model\.transformer\.wte\.", "model.embed_tokens."),
    (r"^model\.transformer\.ln_f\.", "model.norm."),
    (r"^model\.transformer\.ff_out\.", "lm_head."),
    (_LLADA_BLOCK + r"attn_norm\.", r"model.layers.\1.input_layernorm."),
    (_LLADA_BLOCK + r"q_proj\.", r"model.layers.\1.self_attn.q_proj."),
    (_LLADA_BLOCK + r"k_proj\.", r"model.layers.\1.self_attn.k_proj."),
    (_LLADA_BLOCK + r"v_proj\.", r"model.layers.\1.self_attn.v_proj."),
    (_LLADA_BLOCK + r"attn_out\.", r"model.layers.\1.self_attn.o_proj."),
    (_LLADA_BLOCK + r"ff_norm\.", r"model.layers.\1.post_attention_layernorm."),
    (_LLADA_BLOCK + r"ff_proj\.", r"model.layers.\1.mlp.gate_proj."),
    (_LLADA_BLOCK + r"up_proj\.", r"model.layers.\1.mlp.up_proj."),
    (_LLADA_BLOCK + r"ff_out\.", r"model.layers.\1.mlp.down_proj."),
)


@dataclass(frozen=True)
class Family:
    """How one published checkpoint family sits on its transformers host class."""

    name: str
    host: str  # the transformers class implementing the architecture
    host_config: str  # its config class
    config_keys: Callable[[dict], dict]  # published config.json -> host config kwargs
    block_causal: bool  # causal across blocks, bidirectional inside; else fully bidirectional
    logit_shift: bool  # token i is scored at position i - 1
    mask_id: int | None  # the published mask token, used when config.json names none
    block_key: str | None = None  # config key of the block size (block-causal families)
    block_default: int = 0
    renames: tuple[tuple[str, str], ...] = ()  # published parameter name (regex) -> host name
    tokenizer: str | None = "Qwen2Tokenizer"  # the class reading a vocab.json + merges.txt (no tokenizer.json)

    def host_class(self) -> type:
        return getattr(transformers, self.host)

    def make_host_config(self, published: dict):
        return getattr(transformers, self.host_config)(**self.config_keys(published))

    def rename(self, key: str) -> str:
        """A published parameter name -> the host's name (first matching rule; unmatched names stay)."""
        for pattern, replacement in self.renames:
            if re.match(pattern, key):
                return re.sub(pattern, replacement, key)
        return key


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "llada",
            "LlamaForCausalLM",
            "LlamaConfig",
            _llada_keys,
            False,
            False,
            126336,
            renames=_LLADA_RENAMES,
            tokenizer=None,
        ),
        Family("Dream", "Qwen2ForCausalLM", "Qwen2Config", _same_keys, False, True, 151666),
        Family("Fast_dLLM_Qwen", "Qwen2ForCausalLM", "Qwen2Config", _same_keys, True, True, 151665, "bd_size", 32),
        Family("sdar", "Qwen3ForCausalLM", "Qwen3Config", _same_keys, True, False, None, "block_size", 4),
    )
}


@dataclass(frozen=True)
class NativeFamily:
    """A family transformers implements whole (its own generation loop); stretto loads it but cannot decode it."""

    name: str
    host: str
    host_config: str
    missing: str  # what stretto's text decoding lacks to drive it, said to the user who tries

    def host_class(self) -> type:
        return getattr(transformers, self.host)

    def make_host_config(self, published: dict):
        return getattr(transformers, self.host_config).from_dict(published)


NATIVE: dict[str, NativeFamily] = {
    "diffusion_gemma": NativeFamily(
        "diffusion_gemma",
        "DiffusionGemmaForBlockDiffusion",
        "DiffusionGemmaConfig",
        "it corrupts with uniform noise (no mask token to commit over), feeds each step the previous step's logits "
        "(self-conditioning), keeps separate encoder (causal, writes the KV cache) and decoder (canvas, only reads "
        "it) passes, and mixes sliding and global layers of different head widths, which one KVCache shape does "
        "not hold; its generate() also re-noises accepted tokens (stretto never reopens a committed one); run it "
        "with its own generate() or diffusers' DiffusionGemmaPipeline",
    )
}


def family_of(published: dict, where: str) -> Family | NativeFamily:
    """The family of a published config.json, or a ValueError listing the model types stretto knows."""
    model_type = published.get("model_type")
    if model_type in NATIVE:
        return NATIVE[model_type]
    if model_type not in FAMILIES:
        known = ", ".join([*FAMILIES, *NATIVE])
        raise ValueError(f"{where} has model_type {model_type!r}, which stretto cannot host; known: {known}")
    return FAMILIES[model_type]
