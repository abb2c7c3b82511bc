"""DMD2 for the shapes Flux: Yin et al., "Improved Distribution Matching Distillation for Fast Image
Synthesis" (NeurIPS 2024). Losses in `dmd.py`; settings from the paper unless said.

One generator update per `fake_updates` fake-score updates (two-time-scale rule; the paper uses 5). The
generator starts as the teacher and is trained on a sigma grid (DMD2's 4-step [999, 749, 499, 249] is
[1, .75, .5, .25] here): with backward simulation, its input at grid step j is its own no-gradient rollout
from noise to step j (predict x0, renoise), so it trains on what it will see when sampling. A grid of one
point is a one-step generator. No regression loss. The fake score is a copy of the teacher trained with the
flow-matching loss on the generator's detached samples, at guidance 1; the real score is the teacher with CFG.
GAN: a head on the fake score's features after its last double-stream block; real procedural images and the
generator's samples, both noised at the same random level.

Departures: the fake-score loss and the discriminator share one forward pass (generated and real images in
one batch); the generator's DMD and GAN terms use the same samples. No ODE-regression initialisation. The
real score's guidance is 1.5, half the teacher's sampling scale: at 3 the 4-step student stalled at FID 48.5
and the 1-step one got worse the longer it trained (README, "Few-step students").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from stretto.distill import dmd
from stretto.distill.critic import FeatureTap, GanHead
from stretto.distill.students import (
    check_config,
    data_batch,
    generator,
    guided_velocity,
    load_teacher,
    make_ema,
    run,
    student_from,
)
from stretto.train.state import ema_update

METHOD = "dmd2"


@dataclass
class DMDConfig:
    teacher: str = "shapes-flux"
    out: str = "runs/shapes-flux-dmd4"
    steps: int = 500  # generator updates
    batch_size: int = 24
    grid: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])
    # The real score's CFG (the student bakes it in). Below the teacher's sampling scale (3): DMD's fixed point is
    # the guided score's distribution, sharper than what the guided ODE samples; at 3 the students mode-seek.
    guidance: float = 1.5
    fake_updates: int = 5  # fake-score updates per generator update
    lr: float = 4e-5  # generator
    fake_lr: float = 4e-5
    gan_generator_weight: float = 5e-3
    gan_discriminator_weight: float = 1e-2
    ema_decay: float = 0.99
    save_every: int = 25
    seed: int = 0
    device: str = "cpu"
    continue_from: str | None = None  # a run folder whose saved state this run starts from

    def __post_init__(self):
        check_config(self, extra_sizes=("fake_updates",))
        if not self.grid or any(not 0.0 < s <= 1.0 for s in self.grid) or sorted(self.grid, reverse=True) != self.grid:
            raise ValueError(f"grid must be decreasing sigmas in (0, 1], got {self.grid}")

    def command(self) -> str:
        grid = ",".join(f"{s:g}" for s in self.grid)
        return (
            f"stretto distill dmd2 --teacher {self.teacher} --out {self.out} --steps {self.steps} "
            f"--batch-size {self.batch_size} --grid {grid} --guidance {self.guidance:g} "
            f"--fake-updates {self.fake_updates} --lr {self.lr:g} --fake-lr {self.fake_lr:g} --seed {self.seed}"
            + (f" --continue-from {self.continue_from}" if self.continue_from else "")
        )


class DMDTrainer:
    """The generator, the fake score with its GAN head, the frozen teacher, and one update of each."""

    def __init__(self, cfg: DMDConfig):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.teacher = load_teacher(cfg.teacher, cfg.device)
        student = {
            "method": METHOD,
            "sigmas": list(cfg.grid),
            "guidance": cfg.guidance,
            "teacher": cfg.teacher,
            "default_steps": len(cfg.grid),
        }
        self.generator = student_from(self.teacher, student)
        self.ema = make_ema(self.generator)
        self.fake = student_from(self.teacher, None)
        self.head = GanHead(self.fake.transformer.inner_dim).to(cfg.device)
        # Flux's double-stream blocks return (encoder_hidden_states, hidden_states): keep the image stream.
        self.tap = FeatureTap(self.fake.transformer.transformer_blocks[-1], lambda out: out[1])
        betas = (0.0, 0.999)  # as in Self Forcing's DMD; momentum-free Adam suits the moving fake-score target
        self.gen_opt = torch.optim.AdamW(self.generator.parameters(), lr=cfg.lr, betas=betas, weight_decay=0.0)
        fake_params = [*self.fake.parameters(), *self.head.parameters()]
        self.fake_opt = torch.optim.AdamW(fake_params, lr=cfg.fake_lr, betas=betas, weight_decay=0.0)
        self.grid = torch.tensor(cfg.grid)
        self.fake_steps_done = 0
        self.generator_steps_done = 0

    # -- the generator's samples ------------------------------------------------------------------------------
    def generate(self, prompts: list[str], gen: torch.Generator, with_grad: bool) -> torch.Tensor:
        """Backward simulation: pick a grid step j per batch, roll out to it without gradients, predict x0."""
        model = self.generator
        b = len(prompts)
        j = int(torch.randint(len(self.cfg.grid), (1,), generator=gen))
        x = torch.randn(b, 3, 32, 32, generator=gen).to(self.cfg.device)
        with torch.no_grad():
            cond = model.encode_prompts(prompts)
            for i in range(j):
                sigma = self.grid[i].expand(b).to(x.device)
                x0 = x - sigma.view(-1, 1, 1, 1) * model(x, sigma, cond)
                nxt = self.grid[i + 1]
                x = (1 - nxt) * x0 + nxt * torch.randn(x.shape, generator=gen).to(x.device)
        sigma = self.grid[j].expand(b).to(x.device)
        with torch.set_grad_enabled(with_grad):
            cond = model.encode_prompts(prompts) if with_grad else cond
            return x - sigma.view(-1, 1, 1, 1) * model(x, sigma, cond)

    # -- the scores, read as x0 predictions ---------------------------------------------------------------------
    def real_x0(self, prompts: list[str]) -> dmd.X0Predictor:
        cond = self.teacher.encode_prompts(prompts)
        null = self.teacher.encode_prompts([""] * len(prompts))

        def predict(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            v = guided_velocity(self.teacher, x, sigma, cond, null, self.cfg.guidance)
            return x - sigma.view(-1, 1, 1, 1) * v

        return predict

    def fake_x0(self, prompts: list[str]) -> dmd.X0Predictor:
        cond = self.fake.encode_prompts(prompts)
        return lambda x, sigma: x - sigma.view(-1, 1, 1, 1) * self.fake(x, sigma, cond)

    # -- updates ------------------------------------------------------------------------------------------------
    def fake_update(self, step: int, part: int) -> dict[str, float]:
        """Flow matching on the generator's detached samples + the discriminator, in one forward pass."""
        cfg = self.cfg
        real, prompts = data_batch(cfg.seed, step, part, cfg.batch_size)
        gen = generator(cfg.seed, step, part)
        fake_x0 = self.generate(prompts, gen, with_grad=False)
        b = len(prompts)
        sigma = torch.rand(b, generator=gen).to(real.device)
        noise = torch.randn(2 * b, 3, 32, 32, generator=gen)
        both = torch.cat([fake_x0, real.to(fake_x0.device)])
        x_s = dmd.noised(both, sigma.repeat(2), noise.to(both.device))
        cond = self.fake.encode_prompts(prompts + prompts)
        v = self.fake(x_s, sigma.repeat(2), cond)
        logits = self.head(self.tap.take())
        score_loss = torch.nn.functional.mse_loss(v[:b], (noise[:b].to(v.device) - fake_x0))
        disc_loss = dmd.gan_discriminator_loss(logits[b:], logits[:b])
        loss = score_loss + cfg.gan_discriminator_weight * disc_loss
        self.fake_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*self.fake.parameters(), *self.head.parameters()], 1.0)
        self.fake_opt.step()
        self.fake_steps_done += 1
        return {"fake": score_loss.item(), "disc": disc_loss.item()}

    def generator_update(self, step: int) -> dict[str, float]:
        """DMD gradient (real with CFG vs fake) + the non-saturating GAN term, one AdamW step."""
        cfg = self.cfg
        _, prompts = data_batch(cfg.seed, step, 15, cfg.batch_size)
        gen = generator(cfg.seed, step, 15)
        x0 = self.generate(prompts, gen, with_grad=True)
        loss, measured = dmd.distribution_matching_loss(x0, self.real_x0(prompts), self.fake_x0(prompts), gen)
        b = len(prompts)
        sigma = torch.rand(b, generator=gen).to(x0.device)
        x_s = dmd.noised(x0, sigma, torch.randn(x0.shape, generator=gen).to(x0.device))
        self.fake.requires_grad_(False)  # the GAN term trains the generator only
        self.head.requires_grad_(False)
        self.fake(x_s, sigma, self.fake.encode_prompts(prompts))
        gan = dmd.gan_generator_loss(self.head(self.tap.take()))
        self.fake.requires_grad_(True)
        self.head.requires_grad_(True)
        total = loss + cfg.gan_generator_weight * gan
        self.gen_opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.generator.parameters(), 1.0)
        self.gen_opt.step()
        ema_update(self.ema, self.generator, cfg.ema_decay)
        self.generator_steps_done += 1
        return {"dmd": loss.item(), "gan_gen": gan.item(), **measured}

    def step(self, step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for part in range(self.cfg.fake_updates):
            metrics = self.fake_update(step, part)
        return metrics | self.generator_update(step)

    def modules(self) -> dict:
        return {"generator": self.generator, "ema": self.ema, "fake": self.fake, "head": self.head}

    def optimizers(self) -> dict:
        return {"generator_opt": self.gen_opt, "fake_opt": self.fake_opt}


def distill_dmd(cfg: DMDConfig) -> Path:
    """Train (or resume) a DMD2 student; exports the EMA generator to cfg.out/model."""
    return run(DMDTrainer(cfg), desc=f"distill {METHOD} ({len(cfg.grid)}-step grid)")
