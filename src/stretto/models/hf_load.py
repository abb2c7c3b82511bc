"""Load a folder laid out as a diffusion LM is published (config.json, safetensors, tokenizer) as a `PublishedLM`.

The folder holds `config.json` with the family's `model_type` and keys, `model.safetensors` or shards with
`model.safetensors.index.json`, and tokenizer files. Before any weight is read, the tensor names and shapes in
the safetensors headers are checked against the host class built from the config (on the meta device, no
memory), so a config that does not fit its weights fails in one line naming the tensor and both shapes. Then
transformers' own `from_pretrained` loads the weights onto the host class, renaming published names on the
way (`key_mapping`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from stretto.models.hf_families import NATIVE, Family, NativeFamily, family_of
from stretto.models.hf_lm import PublishedLM, PublishedLMConfig
from stretto.models.hf_tokenizer import FolderTokenizer

INDEX = "model.safetensors.index.json"  # a sharded checkpoint's map of tensor -> shard


class LayoutError(ValueError):
    """A published-layout folder that stretto cannot load: one line naming the bad value and what is allowed."""


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of the folder: the one file, or every shard the index names."""
    if (folder / "model.safetensors").exists():
        return [folder / "model.safetensors"]
    index = folder / INDEX
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise LayoutError(f"corrupt shard index {index}: {err}") from None
    files = [folder / name for name in dict.fromkeys(weight_map.values())]
    for f in files:
        if not f.exists():
            raise LayoutError(f"shard {f.name} named by {index} is missing from {folder}")
    return files


def stored_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from the safetensors headers only."""
    shapes = {}
    for f in files:
        try:
            with safe_open(f, framework="pt") as st:
                for name in st.keys():
                    shapes[name] = tuple(st.get_slice(name).get_shape())
        except (SafetensorError, OSError) as err:
            raise LayoutError(f"corrupt weights file {f}: {err}") from None
    return shapes


def check_weights(family: Family | NativeFamily, host_config, files: list[Path], folder: Path) -> None:
    """Raise LayoutError unless the stored tensors are exactly the host's parameters, with the host's shapes."""
    with torch.device("meta"):
        host = family.host_class()(host_config)
    expected = {k: tuple(v.shape) for k, v in host.state_dict().items()}
    for tied in getattr(host, "all_tied_weights_keys", {}):  # a tied parameter is stored once, under its source
        expected.pop(tied, None)
    rename = getattr(family, "rename", lambda name: name)
    stored = {rename(name): (name, shape) for name, shape in stored_shapes(files).items()}
    for key, shape in expected.items():
        if key not in stored:
            raise LayoutError(f"checkpoint {folder} has no tensor for {key} (shape {list(shape)}) of its config")
        name, found = stored[key]
        if found != shape:
            raise LayoutError(
                f"checkpoint {folder}: tensor {name} has shape {list(found)}, its config.json says {list(shape)}"
            )
    unexpected = sorted(stored[k][0] for k in stored.keys() - expected.keys())
    if unexpected:
        raise LayoutError(f"checkpoint {folder} has tensors its {family.host} config does not use: {unexpected[:5]}")


def _token_id(value, what: str) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise LayoutError(f"config.json {what} must be an integer token id, got {value!r}")
    return value


def pipeline_config(family: Family, published: dict, host_config, folder: Path) -> PublishedLMConfig:
    """What the text pipeline reads (mask, pad and end-of-text ids, block size), from the published config."""
    mask_id = _token_id(published.get("mask_token_id", family.mask_id), "mask_token_id")
    if mask_id is None:
        raise LayoutError(f"{folder / 'config.json'} names no mask_token_id; a {family.name} model needs one")
    eot_id = _token_id(published.get("eos_token_id"), "eos_token_id")
    pad_id = _token_id(published.get("pad_token_id"), "pad_token_id")
    eot_id = -1 if eot_id is None else eot_id  # no end-of-text: decode every block
    pad_id = pad_id if pad_id is not None else max(eot_id, 0)
    block = published.get(family.block_key, family.block_default) if family.block_causal else 0
    if not isinstance(block, int) or isinstance(block, bool) or (family.block_causal and block < 1):
        raise LayoutError(f"{folder / 'config.json'}: {family.block_key} must be an integer >= 1, got {block!r}")
    try:
        return PublishedLMConfig(
            family=family.name,
            vocab_size=host_config.vocab_size,
            n_layer=host_config.num_hidden_layers,
            max_len=host_config.max_position_embeddings,
            mask_id=mask_id,
            pad_id=pad_id,
            eot_id=eot_id,
            block_size=block,
        )
    except ValueError as err:
        raise LayoutError(f"{folder / 'config.json'}: {err}") from None


def load_published(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A published-layout folder -> a `PublishedLM` in eval mode on `device`, or a LayoutError saying what is wrong.

    A family transformers implements whole (DiffusionGemma) comes back as its own transformers class.
    """
    folder = Path(folder)
    try:
        published = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise LayoutError(f"corrupt checkpoint config {folder / 'config.json'}: {err}") from None
    try:
        family = family_of(published, str(folder / "config.json"))
    except ValueError as err:
        raise LayoutError(str(err)) from None
    try:
        host_config = family.make_host_config(published)
    except (KeyError, TypeError, ValueError) as err:
        reason = f"missing key {err}" if isinstance(err, KeyError) else str(err).splitlines()[0]
        raise LayoutError(f"{folder / 'config.json'} does not describe a {family.name} model: {reason}") from None
    files = weight_files(folder)
    check_weights(family, host_config, files, folder)
    if isinstance(family, NativeFamily):  # its own class and generate(); stretto's decoding does not drive it
        return family.host_class().from_pretrained(str(folder), config=host_config, dtype=dtype).to(device).eval()
    config = pipeline_config(family, published, host_config, folder)
    try:
        tokenizer = FolderTokenizer(folder, config.eot_id, family.tokenizer)
    except ValueError as err:
        raise LayoutError(str(err)) from None
    if tokenizer.vocab_size > config.vocab_size:
        raise LayoutError(
            f"the tokenizer in {folder} has {tokenizer.vocab_size} tokens, more than the model's vocabulary of "
            f"{config.vocab_size} (config.json); allowed: at most {config.vocab_size}"
        )
    host = family.host_class().from_pretrained(
        str(folder),
        config=host_config,
        key_mapping=dict(family.renames) or None,
        dtype=dtype,
    )
    return PublishedLM(host, config, tokenizer, family.logit_shift).to(device).eval()


def unsupported_reason(model_type: str | None) -> str | None:
    """Why stretto's text decoding cannot drive a model type it loads natively (None when it can)."""
    family = NATIVE.get(model_type)
    return None if family is None else f"a {family.host} cannot be decoded by stretto yet: {family.missing}"
