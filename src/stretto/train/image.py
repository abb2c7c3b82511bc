"""Train the shipped text-to-image models (`shapes-flux`; `shapes-unet` with `arch="unet"`) with rectified-flow
matching (Liu et al. 2022; SD3's logit-normal t).

x_s = (1 - s) x0 + s eps, the network predicts v = eps - x0. Prompts are dropped 10% of the time
(replaced by the empty prompt) so that classifier-free guidance works at sampling time.
Data is generated on the fly from (seed, step), so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stretto import checkpoints
from stretto.data import shapes
from stretto.models.shapes_flux import ShapesFlux, ShapesFluxConfig
from stretto.models.shapes_unet import ShapesUNet, ShapesUNetConfig
from stretto.train.loop import train_loop

ARCHS = ("flux", "unet")


@dataclass
class ImageTrainConfig:
    out: str = "runs/shapes-flux"
    arch: str = "flux"  # "flux" (FluxTransformer2DModel) or "unet" (UNet2DConditionModel, shapes_unet.py)
    steps: int = 10000
    batch_size: int = 64
    lr: float = 6e-4
    warmup: int = 200
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    prompt_dropout: float = 0.1
    pair_fraction: float = 0.5  # share of two-object scenes (the hard ones: binding and order)
    save_every: int = 250
    seed: int = 0
    double_blocks: int = 2
    single_blocks: int = 4
    text_encoder: str = "words"  # the shipped model's; "t5" is transformers' T5EncoderModel (see prompt_encoder.py)
    text_width: int = 64
    text_layers: int = 1
    init_from: str | None = None  # a shapes-flux checkpoint whose same-shaped tensors start the run

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.arch == "unet" and (self.init_from or self.text_encoder != "words"):
            raise ValueError("--arch unet trains from scratch with the word encoder (no --init-from / --text-encoder)")
        for name in ("steps", "batch_size", "save_every", "double_blocks", "single_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.prompt_dropout < 1:
            raise ValueError(f"prompt_dropout must be in [0, 1), got {self.prompt_dropout}")
        if not 0 <= self.pair_fraction <= 1:
            raise ValueError(f"pair_fraction must be in [0, 1], got {self.pair_fraction}")


def flow_matching_loss(
    model: ShapesFlux | ShapesUNet, x0: torch.Tensor, prompts: list[str], gen: torch.Generator
) -> torch.Tensor:
    b = x0.shape[0]
    sigma = torch.sigmoid(torch.randn(b, generator=gen))  # logit-normal(0, 1)
    noise = torch.randn(x0.shape, generator=gen)
    s = sigma.view(b, 1, 1, 1)
    x_s = (1 - s) * x0 + s * noise
    v = model(x_s, sigma, model.encode_prompts(prompts))
    return torch.nn.functional.mse_loss(v, noise - x0)


def train_image(cfg: ImageTrainConfig) -> Path:
    """Train (or resume) and export the EMA weights as a loadable checkpoint in cfg.out/model."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    if cfg.init_from is not None:
        warm_start(model, cfg.init_from)

    def batch_loss(model: ShapesFlux | ShapesUNet, step: int, gen: torch.Generator) -> torch.Tensor:
        x0, prompts, _ = shapes.make_batch(cfg.seed * 1_000_003 + step, cfg.batch_size, cfg.pair_fraction)
        rng = np.random.default_rng((cfg.seed, step))
        prompts = ["" if rng.random() < cfg.prompt_dropout else p for p in prompts]
        return flow_matching_loss(model, x0, prompts, gen)

    return train_loop(
        model, cfg, batch_loss, lambda ema, step: export(ema, Path(cfg.out) / "model", cfg, step), desc=model.kind
    )


def build_model(cfg: ImageTrainConfig) -> ShapesFlux | ShapesUNet:
    if cfg.arch == "unet":
        return ShapesUNet(ShapesUNetConfig(vocab=shapes.VOCAB, text_width=cfg.text_width, text_layers=cfg.text_layers))
    return ShapesFlux(
        ShapesFluxConfig(
            vocab=shapes.VOCAB,
            double_blocks=cfg.double_blocks,
            single_blocks=cfg.single_blocks,
            text_encoder=cfg.text_encoder,
            text_width=cfg.text_width,
            text_layers=cfg.text_layers,
        )
    )


def warm_start(model: ShapesFlux, name_or_path: str) -> None:
    """Copy every tensor of a shapes-flux checkpoint whose name and shape match (a new prompt encoder starts fresh)."""
    source = checkpoints.load(name_or_path, kind=ShapesFlux.kind).state_dict()
    own = model.state_dict()
    same = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(same, strict=False)
    print(f"warm start from {name_or_path}: {len(same)} of {len(own)} tensors copied")


def export(ema: ShapesFlux | ShapesUNet, folder: Path, cfg: ImageTrainConfig, step: int) -> None:
    """Ship the EMA weights in fp16 (half the bytes; loaded back as fp32)."""
    checkpoints.save(
        ema,
        folder,
        dtype=torch.float16,
        trained_steps=step,
        train_command=train_command(cfg),
    )


def train_command(cfg: ImageTrainConfig) -> str:
    """The command that reproduces the run (only the flags of its architecture)."""
    common = f"--steps {cfg.steps} --batch-size {cfg.batch_size} --lr {cfg.lr} --out {cfg.out}"
    text = f"--text-width {cfg.text_width} --text-layers {cfg.text_layers} --pair-fraction {cfg.pair_fraction}"
    if cfg.arch == "unet":
        return f"stretto train image --arch unet {common} {text}"
    return (
        f"stretto train image {common} --text-encoder {cfg.text_encoder} {text} "
        f"--double-blocks {cfg.double_blocks} --single-blocks {cfg.single_blocks}"
        + (f" --init-from {cfg.init_from}" if cfg.init_from else "")
    )
