"""The block stacks of diffusers' transformer classes, declared per class: what the cache mechanism runs.

For every supported class (by name, so nothing here imports diffusers) a `Family` says which block lists the
model's forward loops over, in order; what each block returns and in which order (Flux: (encoder, image)
tokens, CogVideoX: (image, encoder)); how the blocks of a later list get their arguments when the model
computes them between the loops (Flux2's single-stream modulation, Chroma's per-block slices of one
modulation tensor, HunyuanDiT's long skips); which forward arguments the cache cannot honour (ControlNet
residuals, SD3's skip_layers); and how the model's `timestep` relates to its pipeline's scheduler (Flux
pipelines pass t / 1000, Lumina2 passes 1 - t / 1000). UNets are listed too (they run DeepCache and Faster
Diffusion through unet.py). `markdown_table()` renders the table for the README.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DUAL = ("encoder_hidden_states", "hidden_states")  # blocks returning (text, image) tokens, Flux-style
DUAL_IMAGE_FIRST = ("hidden_states", "encoder_hidden_states")  # CogVideoX, HunyuanVideo
SINGLE = ("hidden_states",)


@dataclass(frozen=True)
class FromCall:
    """A block argument taken from the first block's call (as the model made it), by parameter name."""

    name: str


@dataclass(frozen=True)
class FromModule:
    """A block argument taken from what a submodule of the model returned during this forward."""

    attr: str


@dataclass(frozen=True)
class Segment:
    """One block list: its attribute, what its blocks return, and how they are called."""

    attr: str
    outputs: tuple[str, ...] = SINGLE  # the carried arguments a block returns, in its return order
    # the blocks take [text; image] as one `hidden_states` and return it so (the model concatenates the two
    # streams before this list): the cache concatenates before a run of these blocks and splits after it
    joined: bool = False
    # keyword arguments of these blocks (FromCall / FromModule / a constant); None: call them exactly like the
    # first list's blocks (same positional and keyword layout)
    args: dict[str, Any] | None = None
    # extra keyword arguments of block j of this list: per_block(j, module_outputs, list_sizes)
    per_block: Callable[[int, dict, tuple[int, ...]], dict] | None = None


@dataclass(frozen=True)
class Family:
    """How the cache runs one diffusers transformer class."""

    segments: tuple[Segment, ...]
    timestep: str = "timestep"  # the forward parameter holding the step's time (positional or keyword)
    # what its pipelines pass: the scheduler's timestep * scale (a number, or the name of a config field)
    scale: float | str = 1.0
    counts_up: float = 0.0  # nonzero: the timestep counts up to this (0 = noise); noise level = counts_up - timestep
    pipeline_flips: bool = False  # its pipelines pass counts_up - scheduler timestep * scale (Lumina2)
    refuse: tuple[str, ...] = ()  # forward arguments that must be None / empty (the cache would drop them)
    row_args: tuple[str, ...] = ()  # block arguments (or tuples of them) with the batch in dim 0, split by row
    token_level: bool = False  # token-level policies (ToCa, RAS) can run: attention processors known
    # HunyuanDiT-style long skips: block j gets `skip` = the output of block skip_from(j, n), or None
    skip_from: Callable[[int, int], int | None] | None = None
    reads: tuple[str, ...] = ()  # submodules whose outputs the per_block functions read
    note: str = ""

    def captures(self) -> tuple[str, ...]:
        """Submodules whose outputs during the forward the blocks need (FromModule arguments and `reads`)."""
        names = [v.attr for s in self.segments for v in (s.args or {}).values() if isinstance(v, FromModule)]
        return tuple(dict.fromkeys(names + list(self.reads)))

    def noise_level(self, t):
        """The model's timestep as a noise level (larger = noisier), the key of the cache's step schedule."""
        return self.counts_up - t if self.counts_up else t

    def schedule_keys(self, timesteps, config: Any):
        """A pipeline scheduler's timesteps as the noise levels the model will be called at."""
        scale = float(getattr(config, self.scale, 1.0)) if isinstance(self.scale, str) else self.scale
        model_time = timesteps * scale
        return self.noise_level(self.counts_up - model_time if self.pipeline_flips else model_time)


def _chroma_double(j: int, outputs: dict, sizes: tuple[int, ...]) -> dict:
    import torch

    # ChromaTransformer2DModel.forward: one distilled modulation tensor, sliced per block (img then txt mods)
    pooled, n_double, n_single = outputs["distilled_guidance_layer"], sizes[0], sizes[1] if len(sizes) > 1 else 0
    img, txt = 3 * n_single + 6 * j, 3 * n_single + 6 * n_double + 6 * j
    return {"temb": torch.cat((pooled[:, img : img + 6], pooled[:, txt : txt + 6]), dim=1)}


def _chroma_single(j: int, outputs: dict, sizes: tuple[int, ...]) -> dict:
    return {"temb": outputs["distilled_guidance_layer"][:, 3 * j : 3 * j + 3]}


def _hunyuan_skip(j: int, n: int) -> int | None:
    # HunyuanDiT2DModel.forward: blocks 0 .. n//2 - 2 push their output, blocks after n//2 pop one each
    half = n // 2
    return 2 * half - 1 - j if j > half else None


_FLUX_SINGLE = Segment("single_transformer_blocks", DUAL)
_FLUX2_SINGLE = Segment(
    "single_transformer_blocks",
    SINGLE,
    joined=True,
    args={
        "encoder_hidden_states": None,
        "temb_mod": FromModule("single_stream_modulation"),
        "image_rotary_emb": FromCall("image_rotary_emb"),
        "joint_attention_kwargs": FromCall("joint_attention_kwargs"),
    },
)
_CHROMA_SINGLE = Segment(
    "single_transformer_blocks",
    SINGLE,
    joined=True,
    args={
        "image_rotary_emb": FromCall("image_rotary_emb"),
        "attention_mask": FromCall("attention_mask"),
        "joint_attention_kwargs": FromCall("joint_attention_kwargs"),
    },
    per_block=_chroma_single,
)
_CONTROLNET = ("controlnet_block_samples", "controlnet_single_block_samples")

FAMILIES: dict[str, Family] = {
    "FluxTransformer2DModel": Family(
        (Segment("transformer_blocks", DUAL), _FLUX_SINGLE), scale=1e-3, refuse=_CONTROLNET, token_level=True
    ),
    "Flux2Transformer2DModel": Family(
        (Segment("transformer_blocks", DUAL), _FLUX2_SINGLE), scale=1e-3, refuse=("kv_cache", "kv_cache_mode")
    ),
    "ChromaTransformer2DModel": Family(
        (Segment("transformer_blocks", DUAL, per_block=_chroma_double), _CHROMA_SINGLE),
        scale=1e-3,
        refuse=_CONTROLNET,
        reads=("distilled_guidance_layer",),
    ),
    "SD3Transformer2DModel": Family(
        (Segment("transformer_blocks", DUAL),),
        refuse=("block_controlnet_hidden_states", "skip_layers"),
        token_level=True,
    ),
    "DiTTransformer2DModel": Family((Segment("transformer_blocks"),), token_level=True),
    "PixArtTransformer2DModel": Family((Segment("transformer_blocks"),), token_level=True),
    "SanaTransformer2DModel": Family(
        (Segment("transformer_blocks"),), scale="timestep_scale", refuse=("controlnet_block_samples",)
    ),
    "WanTransformer3DModel": Family((Segment("blocks"),)),
    "SkyReelsV2Transformer3DModel": Family(
        (Segment("blocks"),), note="diffusion forcing: a per-frame timestep keys the row on its noisiest frame"
    ),
    "HeliosTransformer3DModel": Family((Segment("blocks"),), row_args=("rotary_emb",)),
    "AnyFlowTransformer3DModel": Family(
        (Segment("blocks"),), note="a per-frame timestep keys the row on its noisiest frame"
    ),
    "CogVideoXTransformer3DModel": Family((Segment("transformer_blocks", DUAL_IMAGE_FIRST),)),
    "HunyuanDiT2DModel": Family(
        (Segment("blocks"),), refuse=("controlnet_block_samples",), skip_from=_hunyuan_skip, note="long skips"
    ),
    "HunyuanVideoTransformer3DModel": Family(
        (Segment("transformer_blocks", DUAL_IMAGE_FIRST), Segment("single_transformer_blocks", DUAL_IMAGE_FIRST))
    ),
    "LTXVideoTransformer3DModel": Family((Segment("transformer_blocks"),), row_args=("image_rotary_emb",)),
    "QwenImageTransformer2DModel": Family(
        (Segment("transformer_blocks", DUAL),), scale=1e-3, refuse=("controlnet_block_samples",)
    ),
    "Lumina2Transformer2DModel": Family(
        (Segment("layers"),),
        scale=1e-3,
        counts_up=1.0,
        pipeline_flips=True,
        row_args=("image_rotary_emb",),
        note="time counts up",
    ),
}

_AURAFLOW_SINGLE = Segment(
    "single_transformer_blocks",
    SINGLE,
    joined=True,
    args={"temb": FromCall("temb"), "attention_kwargs": FromCall("attention_kwargs")},
)
_FLUX_LIKE = (Segment("transformer_blocks", DUAL), _FLUX_SINGLE)  # both lists return (encoder, image)
FAMILIES.update(
    {
        "AuraFlowTransformer2DModel": Family((Segment("joint_transformer_blocks", DUAL), _AURAFLOW_SINGLE), scale=1e-3),
        "MochiTransformer3DModel": Family(
            (Segment("transformer_blocks", DUAL_IMAGE_FIRST),), counts_up=1000.0, note="time counts up"
        ),
        "CogView4Transformer2DModel": Family((Segment("transformer_blocks", DUAL_IMAGE_FIRST),)),
        "CogView3PlusTransformer2DModel": Family((Segment("transformer_blocks", DUAL_IMAGE_FIRST),)),
        "AllegroTransformer3DModel": Family((Segment("transformer_blocks"),)),
        "EasyAnimateTransformer3DModel": Family((Segment("transformer_blocks", DUAL_IMAGE_FIRST),)),
        "ChronoEditTransformer3DModel": Family((Segment("blocks"),)),
        "BriaTransformer2DModel": Family(_FLUX_LIKE, refuse=_CONTROLNET),
        "LongCatImageTransformer2DModel": Family(_FLUX_LIKE, scale=1e-3),
        "OvisImageTransformer2DModel": Family(_FLUX_LIKE, scale=1e-3),
        "Transformer2DModel": Family((Segment("transformer_blocks"),)),
        "LuminaNextDiT2DModel": Family(
            (Segment("layers"),), scale=1e-3, counts_up=1.0, pipeline_flips=True, note="time counts up"
        ),
        "StableAudioDiTModel": Family((Segment("transformer_blocks"),)),
        "SanaVideoTransformer3DModel": Family((Segment("transformer_blocks"),), refuse=("controlnet_block_samples",)),
        "HunyuanVideo15Transformer3DModel": Family((Segment("transformer_blocks", DUAL_IMAGE_FIRST),)),
        "HunyuanImageTransformer2DModel": Family(
            (
                Segment("transformer_blocks", DUAL_IMAGE_FIRST),
                Segment("single_transformer_blocks", DUAL_IMAGE_FIRST),
            )
        ),
        "PRXTransformer2DModel": Family((Segment("blocks"),), scale=1e-3, row_args=("image_rotary_emb",)),
        "NucleusMoEImageTransformer2DModel": Family((Segment("transformer_blocks"),), scale=1e-3),
        "GlmImageTransformer2DModel": Family(
            (Segment("transformer_blocks", DUAL_IMAGE_FIRST),),
            refuse=("kv_caches",),
            note="its image-conditioned mode (KV caches) is refused",
        ),
        "ZImageTransformer2DModel": Family(
            (Segment("layers", ("x",)),),
            timestep="t",
            scale=1e-3,
            counts_up=1.0,
            pipeline_flips=True,
            refuse=("controlnet_block_samples",),
            note="time counts up; text and image tokens run as one unified sequence",
        ),
        "CosmosTransformer3DModel": Family(
            (Segment("transformer_blocks"),),
            refuse=("block_controlnet_hidden_states",),
            note="Cosmos 2 pipelines pass sigma / (sigma + 1), another scale: the cache refuses it; "
            "on the bare model give reset() that schedule",
        ),
    }
)

# UNets run their own mechanism (unet.py) with DeepCache or Faster Diffusion, not a block stack
UNETS = ("UNet2DModel", "UNet2DConditionModel")

# classes the cache recognises but cannot run, and why
_BETWEEN = "its forward {} between blocks, inside the loop the cache replaces"
REFUSED: dict[str, str] = {
    "HiDreamImageTransformer2DModel": _BETWEEN.format("concatenates another Llama layer's text states and truncates"),
    "WanVACETransformer3DModel": _BETWEEN.format("adds VACE control hints"),
    "WanAnimateTransformer3DModel": _BETWEEN.format("adds face-adapter outputs"),
    "WanAnimate2Transformer3DModel": _BETWEEN.format("adds face-adapter outputs"),
    "ConsisIDTransformer3DModel": _BETWEEN.format("adds identity cross-attention"),
    "LatteTransformer3DModel": _BETWEEN.format("reshapes the tokens (spatial and temporal blocks alternate)"),
    "AnyFlowFARTransformer3DModel": "its causal chunked forward keeps its own KV cache across chunks; "
    "a feature cache across its calls is not defined",
}


def family_of(cls: type) -> Family | None:
    """The family of a model class: its table entry (a subclass uses its nearest listed base), else None."""
    for base in cls.__mro__:
        if base.__name__ in FAMILIES:
            return FAMILIES[base.__name__]
    return None


def token_level_classes() -> list[str]:
    """The classes whose attention processors the token-level policies know."""
    return [name for name, fam in FAMILIES.items() if fam.token_level]


def markdown_table() -> str:
    """The supported-models table for the README, generated from FAMILIES and REFUSED."""
    lines = [
        "| diffusers class | block lists (return order) | timestep its pipelines pass | token-level policies | notes |",
        "|---|---|---|---|---|",
    ]
    short = {"encoder_hidden_states": "encoder", "hidden_states": "image"}
    for name, fam in FAMILIES.items():
        lists = " + ".join(
            f"`{s.attr}` ({', '.join(short.get(o, o) for o in s.outputs)}{'; joined' if s.joined else ''})"
            for s in fam.segments
        )
        scale = f"t * config.{fam.scale}" if isinstance(fam.scale, str) else ("t / 1000" if fam.scale == 1e-3 else "t")
        time = f"{fam.counts_up:g} - {scale}" if fam.pipeline_flips else scale
        if fam.counts_up:
            time += f" (counts up to {fam.counts_up:g})"
        notes = [fam.note] if fam.note else []
        if fam.refuse:
            notes.append("refuses " + ", ".join(f"`{r}`" for r in fam.refuse))
        lines.append(f"| {name} | {lists} | {time} | {'yes' if fam.token_level else 'no'} | {'; '.join(notes)} |")
    for name in UNETS:
        policies = "deepcache, fasterdiffusion and none only"
        lines.append(f"| {name} | `down_blocks` + `mid_block` + `up_blocks` | t | no | {policies} |")
    for name, why in REFUSED.items():
        lines.append(f"| {name} | not supported | | | {why} |")
    return "\n".join(lines)
