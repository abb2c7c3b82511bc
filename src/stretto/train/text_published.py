"""Text models trained in a published layout: LLaDA on transformers' Llama, SDAR on Qwen3, exported as published.

`stretto train text --layout llada` trains a `LlamaForCausalLM` with LLaDA's masked-diffusion loss (fully
bidirectional, as LLaDA-8B); `--layout sdar` a `Qwen3ForCausalLM` with the block-diffusion loss (block-causal,
as SDAR). The host is built exactly as `stretto.load` builds it from the published config.json (`hf_families`),
wrapped in `PublishedLM`, so training runs the model decoding runs; the export writes that config.json (LLaDA's
OLMo-style keys or SDAR's Qwen3 keys, the mask token id), the weights under the published names in safetensors
shards with an index, and a tokenizer.json whose ids are the character tokenizer's.
Departures from the published models: a 42-character vocabulary (padded to 48 embedding rows), with pad, mask
and end-of-text as three distinct tokens (LLaDA pads with its end-of-text), and a few hundred thousand weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from stretto.checkpoints import storable
from stretto.data import text_tasks
from stretto.models.hf_families import FAMILIES
from stretto.models.hf_lm import PublishedLM
from stretto.models.hf_load import pipeline_config
from stretto.models.hf_write import (
    Size,
    TokenIds,
    llada_config,
    sdar_config,
    to_llada_names,
    write_shards,
    write_tokenizer,
)

LAYOUT_MODEL = {"llada": "masked", "sdar": "block"}  # published layout -> the loss it trains with
TOKENIZER = text_tasks.TOKENIZER
IDS = TokenIds(vocab=48, eos=TOKENIZER.eot_id, pad=TOKENIZER.pad_id, mask=TOKENIZER.mask_id)
MLP_RATIO = 3  # LLaDA-8B: mlp_hidden_size 12288 at d_model 4096


def size_of(cfg) -> Size:
    """The architecture a TextTrainConfig asks for; the context holds the longest prompt and the canvas."""
    context = text_tasks.max_prompt(cfg.task_list) + cfg.gen_length
    return Size(
        hidden=cfg.n_embd,
        layers=cfg.n_layer,
        heads=cfg.n_head,
        kv_heads=cfg.n_head,
        max_len=-(-context // 32) * 32,
        mlp=MLP_RATIO * cfg.n_embd,
    )


def published_config(cfg) -> dict:
    """The config.json the run exports (without the training record)."""
    if cfg.layout == "llada":
        return llada_config(size_of(cfg), IDS)
    return sdar_config(size_of(cfg), IDS, cfg.block_size)


def build_published(cfg) -> PublishedLM:
    """A fresh host (transformers' init; the caller seeds it) built as `stretto.load` builds it, char tokenizer."""
    published = published_config(cfg)
    family = FAMILIES[published["model_type"]]
    host_config = family.make_host_config(published)
    host = family.host_class()(host_config)
    config = pipeline_config(family, published, host_config, Path(cfg.out) / "model")
    return PublishedLM(host, config, TOKENIZER, family.logit_shift)


def export_published(ema: PublishedLM, folder: Path, cfg, record: dict) -> None:
    """Write the EMA weights in the published layout (fp16, loaded back as fp32); `record`: how it was trained."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = storable(ema.host.state_dict(), torch.float16)
    write_shards(folder, to_llada_names(tensors) if cfg.layout == "llada" else tensors)
    config = published_config(cfg) | {"torch_dtype": "float16"} | record
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_tokenizer(folder, TOKENIZER.chars, list(text_tasks.SPECIALS))
