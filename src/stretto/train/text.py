"""Train the shipped text models: masked diffusion (LLaDA) and block diffusion (BD3-LM) on the text tasks.

Masked diffusion (Nie et al. 2025, SFT form): draw t ~ U(eps, 1) per sequence, mask each answer token with
probability t (the prompt is never masked), and minimise the cross-entropy on masked tokens weighted by 1/t,
normalised by the answer length. The answer region is filled with end-of-text after the answer.
Optionally (`semi_ar`, on by default) half the rows instead get masks shaped like semi-autoregressive block
decoding (clean blocks, a partly masked block, fully masked blocks), the states the decoder actually visits.
Block diffusion (Arriola et al. 2025): t is drawn per block; the network sees [clean sequence ; noisy answer]
in one pass, where a noisy block attends to itself (bidirectional) and to the clean blocks before it, and the
clean copy is block-causal, exactly what the block cache holds at decoding time.
`layout` picks the network: stretto's own `TextLM` (the shipped text-masked / text-block), or a published layout
hosted on transformers (`text_published`: LLaDA on Llama with the masked loss, SDAR on Qwen3 with the block loss).
Batches are a pure function of (seed, step), so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from stretto import checkpoints
from stretto.data import text_tasks
from stretto.models.hf_lm import PublishedLM
from stretto.models.text_lm import (
    BlockDiffusionLM,
    MaskedDiffusionLM,
    TextLM,
    TextLMConfig,
    gen_blocks,
    left_pad_positions,
)
from stretto.train.loop import train_loop
from stretto.train.text_published import LAYOUT_MODEL, build_published, export_published

MODEL_KINDS = ("masked", "block")
LAYOUTS = ("stretto", *LAYOUT_MODEL)
EPS = 1e-3  # smallest masking ratio, keeps the 1/t weight finite


@dataclass
class TextTrainConfig:
    out: str = "runs/text-masked"
    model: str = "masked"  # "masked" (bidirectional, masked-lm) or "block" (block diffusion, block-lm)
    layout: str = "stretto"  # stretto's TextLM, or "llada" (masked) / "sdar" (block) on transformers' classes
    steps: int = 20000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 300
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    save_every: int = 500
    seed: int = 0
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 16  # block-lm only
    gen_length: int = 0  # 0: 64, or 256 when a long task is trained
    tasks: str = "all"  # comma-separated task names, "all" (the short tasks) or "long"
    eval_every: int = 500  # held-out exact match of the EMA model, 0 = only at the end
    eval_per_task: int = 4
    semi_ar: float = 0.5  # masked-lm only: fraction of rows with block-decoding-shaped masks (0 = plain LLaDA)
    decode_block: int = 16  # masked-lm only: the block length those masks assume
    eval_decode: str = "threshold:tau=0.9"  # the rule of the held-out eval (lowconf:tokens=1: LLaDA's baseline)
    eval_cache: str | None = None  # its cache; None: the model's default

    def __post_init__(self):
        if self.model not in MODEL_KINDS:
            raise ValueError(f"model must be one of {list(MODEL_KINDS)}, got {self.model!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {self.layout!r}")
        if self.layout in LAYOUT_MODEL and self.model != LAYOUT_MODEL[self.layout]:
            raise ValueError(
                f"layout {self.layout} trains a {LAYOUT_MODEL[self.layout]} model, got model {self.model!r}; "
                f"allowed: " + ", ".join(f"{k} with {v}" for k, v in LAYOUT_MODEL.items())
            )
        tasks = self.task_list
        if self.gen_length == 0:
            self.gen_length = 256 if any(t in text_tasks.LONG_TASKS for t in tasks) else 64
        for name in (
            "steps",
            "batch_size",
            "save_every",
            "n_layer",
            "n_head",
            "n_embd",
            "gen_length",
            "block_size",
            "eval_per_task",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.model == "block" and self.gen_length % self.block_size:
            raise ValueError(f"gen_length ({self.gen_length}) must be a multiple of block_size ({self.block_size})")
        longest = text_tasks.max_answer(tasks)
        if self.gen_length <= longest:
            raise ValueError(
                f"gen_length {self.gen_length} does not hold the answers of tasks {','.join(tasks)} (up to "
                f"{longest} characters and an end-of-text); allowed: > {longest}"
            )
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd ({self.n_embd}) must split into n_head ({self.n_head}) heads of even width")
        if not 0 <= self.semi_ar <= 1:
            raise ValueError(f"semi_ar must be in [0, 1], got {self.semi_ar}")
        from stretto.pipelines.text.caches import parse_cache
        from stretto.pipelines.text.rules import parse_rule

        parse_rule(self.eval_decode)  # a bad eval spec fails here, not at the first eval
        if self.eval_cache is not None:
            parse_cache(self.eval_cache)

    @property
    def task_list(self) -> tuple[str, ...]:
        return text_tasks.task_names(self.tasks)

    def model_config(self) -> TextLMConfig:
        return TextLMConfig(
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            max_len=max(192, text_tasks.max_prompt(self.task_list) + self.gen_length),
            block_size=self.block_size if self.model == "block" else 0,
        )


def masked_diffusion_loss(
    model: TextLM, ids: torch.Tensor, p: int, gen: torch.Generator, semi_ar: float = 0.0, block: int = 16
) -> torch.Tensor:
    """LLaDA's loss; a `semi_ar` fraction of rows get masks shaped like block decoding instead (see below)."""
    b, s = ids.shape
    g = s - p
    t = EPS + (1 - EPS) * torch.rand(b, 1, generator=gen)
    masked = torch.rand(b, g, generator=gen) < t
    weight = (1 / t).expand(b, g).clone()
    # Semi-autoregressive rows: blocks before a random block k are clean, block k is masked with ratio t and
    # every later block is fully masked, which is exactly what the decoder shows the model. Fully masked
    # tokens carry weight 1 (their masking ratio is 1).
    rows = torch.rand(b, generator=gen) < semi_ar
    if rows.any():
        k = torch.randint(0, -(-g // block), (b, 1), generator=gen)
        blk = torch.arange(g)[None] // block
        masked = torch.where(rows[:, None], (blk > k) | ((blk == k) & masked), masked)
        weight = torch.where(rows[:, None] & (blk > k), torch.ones_like(weight), weight)
    noisy = ids.clone()
    noisy[:, p:][masked] = model.config.mask_id
    logits = model(noisy, left_pad_positions(ids, model.config.pad_id), gen_start=p)[:, p:]
    ce = F.cross_entropy(logits[masked], ids[:, p:][masked], reduction="none")
    return (ce * weight[masked]).sum() / (b * g)


def block_diffusion_mask(ids: torch.Tensor, p: int, block_size: int, pad_id: int) -> torch.Tensor:
    """(B, 1, S + G, S + G) mask for [clean sequence (S) ; noisy answer (G)] (BD3-LM's vectorised pass)."""
    s = ids.shape[1]
    blk = gen_blocks(p, s, block_size)
    q_blk = torch.cat([blk, blk[p:]])
    noisy = torch.cat([torch.zeros(s, dtype=torch.bool), torch.ones(s - p, dtype=torch.bool)])
    k_valid = torch.cat([ids != pad_id, torch.ones(ids.shape[0], s - p, dtype=torch.bool)], dim=1)
    earlier = q_blk[None, :] < q_blk[:, None]  # key block < query block
    same = q_blk[None, :] == q_blk[:, None]
    clean_q = ~noisy[:, None]
    clean_k, noisy_k = ~noisy[None, :], noisy[None, :]
    allowed = (clean_q & clean_k & (earlier | same)) | (~clean_q & ((clean_k & earlier) | (noisy_k & same)))
    return allowed[None, None] & k_valid[:, None, None, :]


def block_diffusion_loss(model: TextLM, ids: torch.Tensor, p: int, gen: torch.Generator) -> torch.Tensor:
    b, s = ids.shape
    g, bs = s - p, model.config.block_size
    t = EPS + (1 - EPS) * torch.rand(b, g // bs, generator=gen)
    t = t.repeat_interleave(bs, dim=1)
    masked = torch.rand(b, g, generator=gen) < t
    noisy = ids[:, p:].clone()
    noisy[masked] = model.config.mask_id
    pos = left_pad_positions(ids, model.config.pad_id)
    logits = model(
        torch.cat([ids, noisy], dim=1),
        torch.cat([pos, pos[:, p:]], dim=1),
        attn_mask=block_diffusion_mask(ids, p, bs, model.config.pad_id),
        gen_start=p,
        slots=torch.cat([torch.arange(s), torch.arange(p, s)]),
    )[:, s:]
    ce = F.cross_entropy(logits[masked], ids[:, p:][masked], reduction="none")
    return (ce / t[masked]).sum() / (b * g)


def quick_eval(model: TextLM, cfg: TextTrainConfig) -> dict[str, float]:
    """Held-out exact match per task with the eval's rule and cache (default: threshold, the model's cache)."""
    from stretto.pipelines.text import generate

    examples = text_tasks.held_out(cfg.eval_per_task, tasks=cfg.task_list)
    prompts = [e.prompt for e in examples]
    res = generate(model.eval(), prompts, cfg.gen_length, decode=cfg.eval_decode, cache=cfg.eval_cache)
    acc: dict[str, float] = {}
    for e, out in zip(examples, res.texts, strict=True):
        acc[e.task] = acc.get(e.task, 0.0) + (out == e.answer) / cfg.eval_per_task
    return acc


def build_model(cfg: TextTrainConfig) -> TextLM | PublishedLM:
    if cfg.layout != "stretto":
        return build_published(cfg)
    cls = MaskedDiffusionLM if cfg.model == "masked" else BlockDiffusionLM
    return cls(cfg.model_config())


def train_text(cfg: TextTrainConfig) -> Path:
    """Train (or resume) and export the EMA weights as a loadable checkpoint in cfg.out/model."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    if cfg.model == "masked":
        loss_fn = functools.partial(masked_diffusion_loss, semi_ar=cfg.semi_ar, block=cfg.decode_block)
    else:
        loss_fn = block_diffusion_loss

    def batch_loss(model: TextLM, step: int, gen: torch.Generator) -> torch.Tensor:
        ids, p = text_tasks.make_batch(cfg.seed, step, cfg.batch_size, cfg.gen_length, cfg.task_list)
        return loss_fn(model, ids, p, gen)

    def evaluate(ema: TextLM, step: int, bar) -> None:
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            acc = quick_eval(ema, cfg)
            bar.write(f"step {step}: held-out exact match " + ", ".join(f"{t} {a:.2f}" for t, a in acc.items()))
            with open(Path(cfg.out) / "eval.log", "a") as f:
                f.write(json.dumps({"step": step, "exact_match": acc}) + "\n")

    return train_loop(
        model, cfg, batch_loss, lambda ema, step: export(ema, Path(cfg.out) / "model", cfg, step),
        desc=model.kind if cfg.layout == "stretto" else f"{cfg.layout} {model.kind}", after_step=evaluate,
        settings=resume_settings(cfg),
    )  # fmt: skip


def resume_settings(cfg: TextTrainConfig) -> dict:
    """What a resumed run must share with the saved one (the step count, saving and evaluation may change)."""
    keep = ("model", "layout", "batch_size", "lr", "warmup", "weight_decay", "ema_decay", "seed", "n_layer", "n_head")
    keep += ("n_embd", "block_size", "gen_length", "tasks", "semi_ar", "decode_block")
    return {k: getattr(cfg, k) for k in keep}


def train_command(cfg: TextTrainConfig) -> str:
    cmd = f"stretto train text --model {cfg.model} --steps {cfg.steps} --batch-size {cfg.batch_size}"
    cmd += f" --lr {cfg.lr:g} --seed {cfg.seed} --n-layer {cfg.n_layer} --n-embd {cfg.n_embd} --out {cfg.out}"
    if cfg.layout != "stretto":
        cmd += f" --layout {cfg.layout}"
    if cfg.n_head != 4:
        cmd += f" --n-head {cfg.n_head}"
    if cfg.gen_length != 64:
        cmd += f" --gen-length {cfg.gen_length}"
    if cfg.model == "block":
        cmd += f" --block-size {cfg.block_size}"
    else:
        cmd += f" --semi-ar {cfg.semi_ar:g}"
    return cmd + (f" --tasks {cfg.tasks}" if cfg.tasks != "all" else "")


def export(ema: TextLM | PublishedLM, folder: Path, cfg: TextTrainConfig, step: int) -> None:
    """Ship the EMA weights in fp16 (half the bytes; loaded back as fp32), in the run's layout."""
    record = {
        "trained_steps": step,
        "gen_length": cfg.gen_length,
        "tasks": list(cfg.task_list),
        "train_command": train_command(cfg),
    }
    if cfg.layout != "stretto":
        export_published(ema, folder, cfg, record)
    else:
        checkpoints.save(ema, folder, dtype=torch.float16, **record)
