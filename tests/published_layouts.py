"""Tiny random checkpoints written exactly as LLaDA, Dream, Fast-dLLM v2 and SDAR are published.

Each builder makes a reference transformers model with random weights (the independent forward the tests
compare against), then writes a folder the way the family publishes it: its config.json keys and model_type,
its parameter names (LLaDA's OLMo names, renamed here by this file's own table, not stretto's), the weights in
two shards with model.safetensors.index.json, and a tokenizer.json built locally with `tokenizers`.
"""

from __future__ import annotations

import json
import re
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


def _qwen_keys(hidden=32, layers=2, heads=4, kv_heads=2, inter=64) -> dict:
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": inter,
        "vocab_size": VOCAB,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": 64,
        "attention_dropout": 0.0,
        "bos_token_id": EOT,
        "eos_token_id": EOT,
        "pad_token_id": EOT,
        "mask_token_id": MASK,
        "torch_dtype": "float32",
    }


# Per family: the published config.json and the host class the reference forward runs on.
LAYOUTS = {
    "llada": {
        "config": {
            "model_type": "llada",
            "architectures": ["LLaDAModelLM"],
            "auto_map": {"AutoModel": "modeling_llada.LLaDAModelLM"},
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 4,
            "mlp_hidden_size": 64,
            "embedding_size": VOCAB,
            "vocab_size": VOCAB,
            "max_sequence_length": 64,
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
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "tie_word_embeddings": False,
        },
    },
    "Dream": {
        "config": {"model_type": "Dream", "architectures": ["DreamModel"], **_qwen_keys()}
        | {"bos_token_id": QWEN_EOT, "eos_token_id": QWEN_EOT, "pad_token_id": QWEN_EOT, "mask_token_id": QWEN_MASK},
        "host": ("Qwen2ForCausalLM", "Qwen2Config"),
        "tokenizer": write_qwen_tokenizer,
    },
    "Fast_dLLM_Qwen": {
        "config": {"model_type": "Fast_dLLM_Qwen", "architectures": ["Fast_dLLM_QwenForCausalLM"], "bd_size": 4}
        | _qwen_keys(),
        "host": ("Qwen2ForCausalLM", "Qwen2Config"),
    },
    "sdar": {
        "config": {"model_type": "sdar", "architectures": ["SDARForCausalLM"], "block_size": 4, "head_dim": 8}
        | _qwen_keys(),
        "host": ("Qwen3ForCausalLM", "Qwen3Config"),
    },
}
SHIFTED = {"Dream", "Fast_dLLM_Qwen"}
BLOCK = {"Fast_dLLM_Qwen": 4, "sdar": 4}


def reference_model(family: str, seed: int = 0):
    """The reference: the family's transformers host class with random weights, peaky enough to decode."""
    layout = LAYOUTS[family]
    cls_name, config_name = layout["host"]
    drop = ("model_type", "architectures", "torch_dtype")
    keys = layout.get("host_config") or {k: v for k, v in layout["config"].items() if k not in drop}
    config = getattr(transformers, config_name)(**keys, initializer_range=0.3)
    torch.manual_seed(seed)
    return getattr(transformers, cls_name)(config).eval()


def write_checkpoint(family: str, folder: Path, seed: int = 0, config_edits: dict | None = None, chars: str = CHARS):
    """Write the family's published layout to folder; return the reference model holding the same weights."""
    ref = reference_model(family, seed)
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
    config = {**LAYOUTS[family]["config"], **(config_edits or {})}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    LAYOUTS[family].get("tokenizer", lambda f: write_tokenizer(f, chars))(folder)
    return ref


def write_diffusion_gemma(folder: Path, seed: int = 0):
    """A tiny DiffusionGemma (MoE text layers, a one-layer vision tower) in two shards; returns the reference."""
    text = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "global_head_dim": 16,
        "num_experts": 4,
        "top_k_experts": 2,
        "moe_intermediate_size": 16,
        "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention"],
        "max_position_embeddings": 128,
    }
    vision = {"model_type": "gemma4_vision", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    vision |= {"num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8}
    config = transformers.DiffusionGemmaConfig(
        text_config=text, vision_config=vision, canvas_length=8, boi_token_id=44, eoi_token_id=45, image_token_id=46
    )
    torch.manual_seed(seed)
    ref = transformers.DiffusionGemmaForBlockDiffusion(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    tied = set(ref.all_tied_weights_keys)
    write_shards(folder, {k: v.detach().clone() for k, v in ref.state_dict().items() if k not in tied})
    (folder / "config.json").write_text(config.to_json_string())
    write_tokenizer(folder)
    return ref
