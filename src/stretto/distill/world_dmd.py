"""Self Forcing with distribution matching for the world model: Huang et al., "Self Forcing: Bridging the
Train-Test Gap in Autoregressive Video Diffusion" (2025), on the DMD of Yin et al. (`dmd.py`).

The generator (the streaming world model, by default a copy of the teacher-forced `world-tf`) rolls out a
clip from its first block with the inference loop (`train.world.rollout`: few-step denoising per block with
one random step carrying gradients, each block committed to a rolling KV cache at t = 0 without gradients).
The clip is then scored as a whole, as Self Forcing scores a whole video with its bidirectional teacher: every
generated frame noised at one level s, the prompt clean, block-causal attention among the noisy frames. The
real score is a frozen model trained in exactly that layout (`stretto train world --mode clip-score`); the
fake score starts as a copy of it and is trained online on the generator's rollouts. The simulator's frames
beyond the prompt are never read: the loss asks "is this whole clip what these actions give", not "is this
the map".

Scoring each frame given the generated frames before it as clean context (teacher-forcing layout, with the
teacher-forced model as the real score) was tried first and is worse: a degraded past then makes a degraded
continuation look right, and the rollouts lost PSNR (README, streaming video).

Two-time-scale: `fake_updates` fake-score updates per generator update, each on a fresh no-gradient
rollout, as in DMD2 (the paper uses 5). Departures: no GAN term and no ODE-regression initialisation (the
generator starts as the teacher-forced model, which already samples in 4 steps); the clip score is causal,
not bidirectional (CausVid's asymmetric teacher); one noise level per clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from stretto import checkpoints
from stretto.distill import dmd
from stretto.distill.students import check_config, make_ema, run
from stretto.models.world_dit import WorldDiT
from stretto.pipelines.world import DEFAULT_SHIFT, DEFAULT_SINKS, DEFAULT_STEPS, DEFAULT_WINDOW
from stretto.train.state import ema_update
from stretto.train.world import WorldTrainConfig, clip_batch, rollout

METHOD = "self-forcing-dmd"


@dataclass
class WorldDMDConfig:
    teacher: str = "world-score"  # the real score: a clip-score model (`stretto train world --mode clip-score`)
    init: str | None = "world-tf"  # the generator's start (None: a copy of the teacher)
    out: str = "runs/world-sf"
    steps: int = 600  # generator updates
    batch_size: int = 8
    frames: int = 10  # rollout length, the prompt block included
    denoise_steps: int = DEFAULT_STEPS  # few-step sampler of the rollout (the student's own)
    shift: float = DEFAULT_SHIFT
    window: int = DEFAULT_WINDOW
    sinks: int = DEFAULT_SINKS
    fake_updates: int = 2
    lr: float = 5e-5
    fake_lr: float = 5e-5
    ema_decay: float = 0.99
    save_every: int = 25
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        check_config(self, extra_sizes=("frames", "denoise_steps", "window", "fake_updates"))
        if self.sinks < 0:
            raise ValueError(f"sinks must be >= 0, got {self.sinks}")

    def command(self) -> str:
        return (
            f"stretto distill self-forcing --teacher {self.teacher} --out {self.out} --steps {self.steps} "
            f"--batch-size {self.batch_size} --frames {self.frames} --denoise-steps {self.denoise_steps} "
            f"--window {self.window} --sinks {self.sinks} --fake-updates {self.fake_updates} --lr {self.lr:g} "
            f"--fake-lr {self.fake_lr:g} --seed {self.seed} --init {self.init or 'teacher'}"
        )


def load_world(name_or_path: str, role: str, device: str) -> WorldDiT:
    try:
        return checkpoints.load(name_or_path, device=device, kind=WorldDiT.kind)
    except checkpoints.CheckpointError as err:
        raise checkpoints.CheckpointError(f"{role}: {err}") from None


class WorldDMDTrainer:
    """The generator, the fake score, the frozen teacher, and one update of each."""

    def __init__(self, cfg: WorldDMDConfig):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.teacher = load_world(cfg.teacher, "--teacher", cfg.device).eval().requires_grad_(False)
        start = self.teacher if cfg.init is None else load_world(cfg.init, "--init", cfg.device)
        fpb, teacher_fpb = start.config.frames_per_block, self.teacher.config.frames_per_block
        if fpb != teacher_fpb:
            raise ValueError(f"--init has {fpb} frame(s) per block, its teacher {teacher_fpb}: they must match")
        if cfg.frames % fpb or cfg.frames < 2 * fpb:
            raise ValueError(f"frames ({cfg.frames}) must be a multiple of the model's frames per block ({fpb}) "
                             "covering at least two blocks")  # fmt: skip
        self.generator = make_ema(start).train().requires_grad_(True)  # a fresh copy
        self.generator.config.sampling_steps = cfg.denoise_steps  # streams default to the steps it was trained for
        self.ema = make_ema(self.generator)
        self.fake = make_ema(self.teacher).train().requires_grad_(True)
        betas = (0.0, 0.999)  # as in Self Forcing's DMD: no momentum against a moving fake score
        self.gen_opt = torch.optim.AdamW(self.generator.parameters(), lr=cfg.lr, betas=betas, weight_decay=0.0)
        self.fake_opt = torch.optim.AdamW(self.fake.parameters(), lr=cfg.fake_lr, betas=betas, weight_decay=0.0)
        self.data = WorldTrainConfig(batch_size=cfg.batch_size, frames=cfg.frames, seed=cfg.seed, frames_per_block=fpb)

    def batch(self, step: int, part: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
        """Prompts and actions for (seed, step, part) (a resumed run sees the same ones) and a noise generator."""
        clips, actions = clip_batch(self.data, step * 16 + part)
        gen = torch.Generator().manual_seed((self.cfg.seed * 7919 + step) * 16 + part)
        return clips.to(self.cfg.device), actions.to(self.cfg.device), gen

    def roll(self, clips, actions, gen) -> torch.Tensor:
        c = self.cfg
        return rollout(self.generator, clips, actions, gen, c.denoise_steps, c.shift, c.window, c.sinks)

    # -- a score of whole clips: the prompt clean, every generated frame noised at the clip's level ----------------
    def velocity(self, model: WorldDiT, prompt: torch.Tensor, actions: torch.Tensor):
        """(x_s of the frames after the prompt, sigma per clip) -> their velocity, block-causal over the clip."""
        fpb = prompt.shape[1]

        def call(x_s: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            b, m = x_s.shape[:2]
            t = torch.cat([torch.zeros(b, fpb, device=x_s.device), sigma[:, None].expand(b, m)], dim=1)
            return model(torch.cat([prompt, x_s], dim=1), t, actions)[:, fpb:]

        return call

    def x0(self, model: WorldDiT, prompt: torch.Tensor, actions: torch.Tensor) -> dmd.X0Predictor:
        velocity = self.velocity(model, prompt, actions)
        return lambda x_s, sigma: x_s - sigma.view(-1, 1, 1, 1, 1) * velocity(x_s, sigma)

    # -- updates ------------------------------------------------------------------------------------------------
    def fake_update(self, step: int, part: int) -> dict[str, float]:
        clips, actions, gen = self.batch(step, part)
        with torch.no_grad():
            generated = self.roll(clips, actions, gen)
        prompt = clips[:, : self.teacher.config.frames_per_block]
        loss = dmd.fake_score_loss(self.velocity(self.fake, prompt, actions), generated, gen)
        self.fake_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.fake.parameters(), 1.0)
        self.fake_opt.step()
        return {"fake": loss.item()}

    def generator_update(self, step: int) -> dict[str, float]:
        clips, actions, gen = self.batch(step, 15)
        generated = self.roll(clips, actions, gen)
        prompt = clips[:, : self.teacher.config.frames_per_block]
        loss, measured = dmd.distribution_matching_loss(
            generated, self.x0(self.teacher, prompt, actions), self.x0(self.fake, prompt, actions), gen
        )
        self.gen_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.generator.parameters(), 1.0)
        self.gen_opt.step()
        ema_update(self.ema, self.generator, self.cfg.ema_decay)
        return {"dmd": loss.item(), **measured}

    def step(self, step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for part in range(self.cfg.fake_updates):
            metrics = self.fake_update(step, part)
        return metrics | self.generator_update(step)

    def modules(self) -> dict:
        return {"generator": self.generator, "ema": self.ema, "fake": self.fake}

    def optimizers(self) -> dict:
        return {"generator_opt": self.gen_opt, "fake_opt": self.fake_opt}

    def export(self, folder: Path, step: int) -> None:
        checkpoints.save(self.ema, folder, dtype=torch.float16, trained_steps=step, train_mode=METHOD,
                         teacher=self.cfg.teacher, train_command=self.cfg.command())  # fmt: skip


def distill_self_forcing(cfg: WorldDMDConfig) -> Path:
    """Train (or resume) Self Forcing with DMD; exports the EMA generator to cfg.out/model."""
    return run(WorldDMDTrainer(cfg), desc=f"distill {METHOD} ({cfg.denoise_steps}-step rollout)")
