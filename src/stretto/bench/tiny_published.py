"""Tiny random checkpoints written exactly as LLaDA, Dream, Fast-dLLM v2, SDAR and DiffusionGemma are published.

What the published-layout tests load and what `stretto bench text --peers` runs the peer engines on (no hub
here: every model is built from its config, with random weights). Each builder makes a reference transformers
model with random weights (the independent forward the tests compare against), then writes a folder the way
the family publishes it: its config.json keys and model_type, its parameter names (LLaDA's OLMo names, renamed
here by this file's own table, not stretto's), the weights in two shards with model.safetensors.index.json, and
a tokenizer.json built locally with `tokenizers`. `Size` sets the width, depth and context (default: the
smallest that decodes, which the tests use).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

SPECIALS = ["<|endoftext|>", "<|mdm_mask|>", "<unk>"]
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 =+:"
EOT, MASK = 0, 1
QWEN_EOT, QWEN_MASK = len(CHARS), len(CHARS) + 1  # Qwen2's special tokens follow its vocabulary
VOCAB = 48  # the embedding is padded past the tokenizer's 43 tokens, as the published models' are

# Host (transformers) name -> LLaDA's published name: written out independently of stretto's table.
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


def write_tokenizer(folder: Path, chars: str = CHARS) -> None:
    """A character-level tokenizer.json: the specials, then one token per character."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(chars))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(folder / "tokenizer.json"))


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


def write_shards(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Two safetensors shards and the index naming which tensor lives where."""
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        shard = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n].contiguous() for n in part}, folder / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}}
    (folder / "model.safetensors.index.json").write_text(json.dumps({**index, "weight_map": weight_map}))


@dataclass(frozen=True)
class Size:
    """A tiny checkpoint's architecture: the default (the tests') is the smallest that decodes; the bench widens it."""

    hidden: int = 32
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    max_len: int = 64

    def __post_init__(self):
        for name in ("hidden", "layers", "heads", "kv_heads", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"Size.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % (2 * self.heads) or self.heads % self.kv_heads:
            raise ValueError(
                f"Size.hidden ({self.hidden}) must split into {self.heads} heads of even width and heads into "
                f"kv_heads ({self.kv_heads}) groups"
            )


def _qwen_keys(size: Size) -> dict:
    return {
        "hidden_size": size.hidden,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "num_key_value_heads": size.kv_heads,
        "intermediate_size": 2 * size.hidden,
        "vocab_size": VOCAB,
        "max_position_embeddings": size.max_len,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": size.max_len,
        "attention_dropout": 0.0,
        "bos_token_id": EOT,
        "eos_token_id": EOT,
        "pad_token_id": EOT,
        "mask_token_id": MASK,
        "torch_dtype": "float32",
    }


def layout(family: str, size: Size = Size()) -> dict:
    """The family's published config.json and the host class (and its config) the reference forward runs on."""
    if family == "llada":  # OLMo-style keys; the host config is written out separately
        return {
            "config": {
                "model_type": "llada",
                "architectures": ["LLaDAModelLM"],
                "auto_map": {"AutoModel": "modeling_llada.LLaDAModelLM"},
                "d_model": size.hidden,
                "n_layers": size.layers,
                "n_heads": size.heads,
                "n_kv_heads": size.heads,
                "mlp_hidden_size": 2 * size.hidden,
                "embedding_size": VOCAB,
                "vocab_size": VOCAB,
                "max_sequence_length": size.max_len,
                "rms_norm_eps": 1e-5,
                "rope_theta": 500000.0,
                "mask_token_id": MASK,
                "eos_token_id": EOT,
                "pad_token_id": EOT,
                "weight_tying": False,
                "include_bias": False,
                "include_qkv_bias": False,
                "activation_type": "silu",
                "block_type": "llama",
                "layer_norm_type": "rms",
                "rope": True,
                "use_cache": False,
            },
            "host": ("LlamaForCausalLM", "LlamaConfig"),
            "host_config": {
                "vocab_size": VOCAB,
                "hidden_size": size.hidden,
                "intermediate_size": 2 * size.hidden,
                "num_hidden_layers": size.layers,
                "num_attention_heads": size.heads,
                "num_key_value_heads": size.heads,
                "max_position_embeddings": size.max_len,
                "rms_norm_eps": 1e-5,
                "rope_theta": 500000.0,
                "tie_word_embeddings": False,
            },
        }
    if family == "Dream":
        dream_ids = {"bos_token_id": QWEN_EOT, "eos_token_id": QWEN_EOT, "pad_token_id": QWEN_EOT}
        return {
            "config": {"model_type": "Dream", "architectures": ["DreamModel"], **_qwen_keys(size)}
            | dream_ids
            | {"mask_token_id": QWEN_MASK},
            "host": ("Qwen2ForCausalLM", "Qwen2Config"),
            "tokenizer": write_qwen_tokenizer,
        }
    if family == "Fast_dLLM_Qwen":
        return {
            "config": {"model_type": "Fast_dLLM_Qwen", "architectures": ["Fast_dLLM_QwenForCausalLM"], "bd_size": 4}
            | _qwen_keys(size),
            "host": ("Qwen2ForCausalLM", "Qwen2Config"),
        }
    if family == "sdar":
        sdar = {"model_type": "sdar", "architectures": ["SDARForCausalLM"], "block_size": 4}
        return {
            "config": sdar | {"head_dim": size.hidden // size.heads} | _qwen_keys(size),
            "host": ("Qwen3ForCausalLM", "Qwen3Config"),
        }
    raise ValueError(f"unknown published family {family!r}; allowed: {', '.join(FAMILIES)}")


FAMILIES = ("llada", "Dream", "Fast_dLLM_Qwen", "sdar")
LAYOUTS = {family: layout(family) for family in FAMILIES}  # at the default (test) size
SHIFTED = {"Dream", "Fast_dLLM_Qwen"}
BLOCK = {"Fast_dLLM_Qwen": 4, "sdar": 4}


def reference_model(family: str, seed: int = 0, size: Size = Size()):
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
    size: Size = Size(),
):
    """Write the family's published layout to folder; return the reference model holding the same weights."""
    ref = reference_model(family, seed, size)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, value in ref.state_dict().items():
        if family == "llada":
            for pattern, replacement in TO_LLADA:
                if re.match(pattern, name):
                    name = re.sub(pattern, replacement, name)
                    break
        tensors[name] = value.detach().clone()
    write_shards(folder, tensors)
    spec = layout(family, size)
    config = {**spec["config"], **(config_edits or {})}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    spec.get("tokenizer", lambda f: write_tokenizer(f, chars))(folder)
    return ref


def write_diffusion_gemma(folder: Path, seed: int = 0, size: Size = Size(max_len=128), canvas_length: int = 8):
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
