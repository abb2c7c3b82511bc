"""Self-Forcing / CausVid checkpoints and diffusers Wan folders, loaded onto diffusers' WanTransformer3DModel.

Released layout (Self Forcing, Huang et al. 2025; CausVid, Yin et al. 2025): a `.pt` holding `generator` and/or
`generator_ema` state dicts of a causal Wan2.1 with the original Wan parameter names under a `model.` prefix (FSDP
runs may add `_fsdp_wrapped_module.`). It is read with `torch.load(weights_only=True)`: tensors and containers
only, so a pickle that would run code is refused, with the command that converts it to safetensors; a
`.safetensors` file of the same state dict loads too. Names go through diffusers' own single-file Wan converter.
Sizes are read from the weights; the head count (which no weight shape gives) comes from a `config.json` beside
the file (Wan's own `num_heads`, or diffusers' `num_attention_heads`), else Wan2.1's 128-dim heads.
The diffusers layout is a folder with the transformer's `config.json` and safetensors (or a pipeline folder
with a `transformer/` subfolder), holding a `WanTransformer3DModel` or SkyReels-V2's diffusion-forcing
`SkyReelsV2Transformer3DModel`.

Which weights were trained to stream: a released Self-Forcing / CausVid file was (block-causal, its own
rollouts); a SkyReels-V2 DF transformer was (diffusion forcing: per-frame noise levels, causal blocks); a
diffusers `WanTransformer3DModel` folder is taken as plain Wan2.1, trained on whole clips with bidirectional
attention, unless its config.json says `"causal_training": "<method>"`: it streams, with a warning that its
frames were never trained block-causally.

An AnyFlow-FAR folder (diffusers' `AnyFlowFARTransformer3DModel`, trained chunk-causally) loads as a `CausalFAR`.
"""

from __future__ import annotations

import json
import math
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from stretto.models.causal_far import CausalFAR
from stretto.models.causal_wan import SKYREELS_CLASS, CausalWan

RELEASE_SUFFIXES = (".pt", ".pth", ".safetensors")
STATE_KEYS = ("generator_ema", "generator")  # the EMA weights are the ones Self Forcing samples with (--use_ema)
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_orig_mod.")
WAN21_HEAD_DIM = 128  # every Wan2.1 size (1.3B: 12 x 128, 14B: 40 x 128)
WAN_CLASS = "WanTransformer3DModel"
HOSTED_CLASSES = (WAN_CLASS, SKYREELS_CLASS)
ANYFLOW_FAR_CLASS = "AnyFlowFARTransformer3DModel"
CAUSAL_KEY = "causal_training"  # stretto's mark on a diffusers Wan folder whose weights were trained to stream
SKYREELS_BLOCK = 5  # SkyReels-V2's recommended causal_block_size (with ar_step 5)
SKYREELS_LATENT_SIZE = (68, 120)  # its 544 x 960 (540P) video through Wan's 8x VAE


class NotCausalWarning(UserWarning):
    """A Wan checkpoint streamed block-causally although it was trained on whole clips (bidirectional)."""


def is_wan_checkpoint(path: str | Path) -> bool:
    """A released Wan state-dict file, or a folder holding a diffusers Wan transformer (read: config.json only)."""
    path = Path(path)
    if path.is_file():
        return path.suffix in RELEASE_SUFFIXES
    return _diffusers_folder(path) is not None


def _diffusers_folder(path: Path) -> Path | None:
    for folder in (path, path / "transformer"):
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(config, dict) and config.get("_class_name") in (*HOSTED_CLASSES, ANYFLOW_FAR_CLASS):
            return folder
    return None


def load_causal_wan(path: str | Path, **adapter) -> CausalWan | CausalFAR:
    """A Self-Forcing / CausVid release file or a diffusers Wan / SkyReels-V2 folder -> `CausalWan` (fp32, eval);
    an AnyFlow-FAR folder -> `CausalFAR`.

    Warns (`NotCausalWarning`) when the weights were not trained to stream (see the module docstring).
    """
    path = Path(path)
    if path.is_file():
        transformer, causal = _from_release(path), "self-forcing"
    else:
        transformer, causal = _from_diffusers_folder(path)
    if causal == ANYFLOW_FAR_CLASS:  # chunks as it was trained: (1, 3, 3, ...) in the released config
        partition = list(transformer.config.chunk_partition)
        adapter.setdefault("frames_per_block", max(partition))
        if partition[0] <= adapter["frames_per_block"]:
            adapter.setdefault("first_chunk", partition[0])
        return CausalFAR(transformer.float().eval(), **adapter).eval()
    if type(transformer).__name__ == SKYREELS_CLASS:
        causal = "diffusion-forcing"
        blocks = transformer.config.num_frame_per_block
        adapter.setdefault("frames_per_block", blocks if blocks > 1 else SKYREELS_BLOCK)
        adapter.setdefault("latent_size", SKYREELS_LATENT_SIZE)
    if causal is None:
        warnings.warn(
            f"{path} is a plain Wan transformer, trained on whole clips with bidirectional attention, not "
            "block-causally: streamed block by block its frames will drift and break up. Stream a Self-Forcing / "
            f"CausVid release or a SkyReels-V2 DF folder, or, if these weights were trained to stream, add "
            f'"{CAUSAL_KEY}": "<method>" to its config.json',
            NotCausalWarning,
            stacklevel=2,
        )
    return CausalWan(transformer.float().eval(), causal_training=causal, **adapter).eval()


def _from_diffusers_folder(path: Path):
    import diffusers

    folder = _diffusers_folder(path)
    if folder is None:
        raise ValueError(f"{path} holds no diffusers {' or '.join(HOSTED_CLASSES)} (config.json with that _class_name)")
    config = json.loads((folder / "config.json").read_text())
    causal = ANYFLOW_FAR_CLASS if config["_class_name"] == ANYFLOW_FAR_CLASS else config.pop(CAUSAL_KEY, None)
    cls = getattr(diffusers, config["_class_name"])
    # from_pretrained would need accelerate for Wan (its fp32-kept modules); the config and the shards suffice
    transformer = cls.from_config(config)
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise ValueError(f"{folder} has a Wan config.json but no .safetensors weights")
    state = {}
    for shard in shards:
        try:
            state.update(load_file(shard))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"corrupt safetensors file {shard}: {err}") from None
    _load_weights(transformer, state, folder)
    return transformer, causal if isinstance(causal, str) and causal else None


def read_release(path: Path) -> dict[str, torch.Tensor]:
    """The generator's state dict of a released file, tensors only, with diffusers' Wan names."""
    if path.suffix == ".safetensors":
        try:
            state = load_file(path)
        except (SafetensorError, OSError) as err:
            raise ValueError(f"corrupt safetensors file {path}: {err}") from None
    else:
        state = _load_tensors_only(path)
    if isinstance(state, Mapping):
        key = next((k for k in STATE_KEYS if k in state), None)
        state = state[key] if key is not None else state
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{path} holds no state dict (expected {' or '.join(STATE_KEYS)} or parameter tensors)")
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ValueError(f"{path}: entry {bad!r} is a {type(state[bad]).__name__}, not a tensor")
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers({_strip(k): v for k, v in state.items()})


def _load_tensors_only(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():
            raise ValueError(f"{path} is not a readable torch checkpoint ({str(err).splitlines()[-1]})") from None
        out = path.with_suffix(".safetensors")
        convert = (
            f"python -c \"import torch; from safetensors.torch import save_file; sd = torch.load('{path}', "
            f"weights_only=False); save_file(sd.get('generator_ema', sd.get('generator', sd)), '{out}')\""
        )
        raise ValueError(
            f"{path} is a pickle that holds code, not only tensors; stretto will not run it. If you trust its "
            f"source, convert it once to safetensors and load that: {convert}"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path} is not a readable torch checkpoint ({str(err).splitlines()[0]})") from None


def _strip(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        key = key.replace(prefix, "")
    return key.removeprefix("model.") if not key.startswith("model.diffusion_model.") else key


def _from_release(path: Path):
    from diffusers import WanTransformer3DModel

    state = read_release(path)
    transformer = WanTransformer3DModel(**release_config(state, _heads_beside(path)))
    _load_weights(transformer, state, path)
    return transformer


def _load_weights(transformer, state: Mapping[str, torch.Tensor], source: Path) -> None:
    try:
        missing, unexpected = transformer.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a shape that does not fit the config
        raise ValueError(f"{source} does not fit its Wan config: {str(err).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise ValueError(f"{source} is not a Wan2.1 T2V model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def _heads_beside(path: Path) -> int | None:
    try:
        config = json.loads((path.parent / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    heads = config.get("num_heads", config.get("num_attention_heads")) if isinstance(config, dict) else None
    return heads if isinstance(heads, int) else None


def release_config(state: Mapping[str, torch.Tensor], heads: int | None = None) -> dict:
    """diffusers' WanTransformer3DModel config of a state dict with diffusers' names, sizes read off the weights."""
    if "patch_embedding.weight" not in state:
        raise ValueError("not a Wan transformer state dict: no patch_embedding.weight")
    if any("image_embedder" in k or "add_k_proj" in k for k in state):
        raise ValueError("an image-to-video Wan (img_emb / k_img weights) is not supported; a T2V generator is")
    inner, in_channels, *patch = state["patch_embedding.weight"].shape
    heads = heads if heads is not None else max(inner // WAN21_HEAD_DIM, 1)
    if inner % heads or (inner // heads) % 2:
        raise ValueError(f"Wan width {inner} does not split into {heads} heads of an even dim")
    needed = (
        "proj_out.weight",
        "condition_embedder.text_embedder.linear_1.weight",
        "condition_embedder.time_embedder.linear_1.weight",
        "blocks.0.ffn.net.0.proj.weight",
    )
    absent = [k for k in needed if k not in state]
    if absent:
        raise ValueError(f"not a Wan2.1 T2V state dict: no {absent[0]}")
    return {
        "patch_size": tuple(patch),
        "num_attention_heads": heads,
        "attention_head_dim": inner // heads,
        "in_channels": in_channels,
        "out_channels": state["proj_out.weight"].shape[0] // math.prod(patch),
        "text_dim": state["condition_embedder.text_embedder.linear_1.weight"].shape[1],
        "freq_dim": state["condition_embedder.time_embedder.linear_1.weight"].shape[1],
        "ffn_dim": state["blocks.0.ffn.net.0.proj.weight"].shape[0],
        "num_layers": 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")),
        "cross_attn_norm": "blocks.0.norm2.weight" in state,
    }
