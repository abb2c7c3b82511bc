"""Self Forcing with DMD on a tiny world model: zero gradient when the scores agree, only the generator and the
fake score learn, resume equivalence, one-line errors for a wrong teacher or block size."""

from __future__ import annotations

import json

import pytest
import torch

from stretto import checkpoints
from stretto.cli import main
from stretto.data import world
from stretto.distill.world_dmd import WorldDMDConfig, WorldDMDTrainer, distill_self_forcing
from stretto.models.world_dit import WorldDiT, WorldDiTConfig
from stretto.pipelines.world import StreamSettings, stream

torch.set_num_threads(1)


def save_tiny(folder, frames_per_block: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    model = WorldDiT(WorldDiTConfig(n_layer=1, n_head=2, n_embd=32, frames_per_block=frames_per_block))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)  # every weight random: adaLN-zero init would output zeros and hide bugs
    return checkpoints.save(model, folder)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("teacher") / "model")


def config(teacher_dir, out, **kw) -> WorldDMDConfig:
    settings = dict(teacher=str(teacher_dir), init=None, out=str(out), steps=1, batch_size=2, frames=3, denoise_steps=2,
                    window=1, sinks=1, fake_updates=1, save_every=1)  # fmt: skip
    return WorldDMDConfig(**(settings | kw))


def test_dmd_gradient_is_zero_while_the_fake_score_is_the_teacher(teacher_dir, tmp_path):
    trainer = WorldDMDTrainer(config(teacher_dir, tmp_path))
    before = [p.detach().clone() for p in trainer.generator.parameters()]
    metrics = trainer.generator_update(0)  # no fake update yet: fake == teacher
    assert metrics["dmd_grad_norm"] == 0.0 and metrics["dmd"] == 0.0
    # a zero loss moves no weight (AdamW without weight decay)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.generator.parameters(), strict=True))


def test_one_step_trains_the_generator_and_fake_score_never_the_teacher(teacher_dir, tmp_path):
    trainer = WorldDMDTrainer(config(teacher_dir, tmp_path))
    teacher = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    gen0 = [p.detach().clone() for p in trainer.generator.parameters()]
    metrics = trainer.step(0)
    assert metrics["dmd_grad_norm"] > 0 and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert all(torch.equal(v, trainer.teacher.state_dict()[k]) for k, v in teacher.items())
    assert any(not torch.equal(a, b) for a, b in zip(gen0, trainer.generator.parameters(), strict=True))
    assert any(not torch.equal(a, trainer.teacher.state_dict()[k]) for k, a in trainer.fake.state_dict().items())


def test_resumed_run_equals_an_uninterrupted_one(teacher_dir, tmp_path):
    whole = distill_self_forcing(config(teacher_dir, tmp_path / "a", steps=2))
    distill_self_forcing(config(teacher_dir, tmp_path / "b", steps=1))
    resumed = distill_self_forcing(config(teacher_dir, tmp_path / "b", steps=2))
    a, b = checkpoints.load(whole).state_dict(), checkpoints.load(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((resumed / "config.json").read_text())
    assert meta["train_mode"] == "self-forcing-dmd" and meta["trained_steps"] == 2
    assert meta["train_command"].startswith("stretto distill self-forcing")
    assert meta["config"]["sampling_steps"] == 2  # the rollout's steps: what its streams default to


def test_a_stream_defaults_to_the_models_own_steps(teacher_dir):
    model = checkpoints.load(teacher_dir, kind="world-dit")
    model.config.sampling_steps = 2
    prompt, prompt_actions, _ = world.prompt_block([5], [0], 1)

    def frames(steps):
        settings = StreamSettings(mode="kv-rolling", steps=steps, window=2, sinks=1)
        return torch.cat([f.pixels for f in stream(model, prompt, prompt_actions, [1, 2, 3], settings, frames=3)])

    assert torch.equal(frames(None), frames(2)) and not torch.equal(frames(None), frames(4))


def test_resuming_with_other_settings_is_refused(teacher_dir, tmp_path):
    distill_self_forcing(config(teacher_dir, tmp_path, steps=1))
    with pytest.raises(ValueError, match="denoise_steps"):
        distill_self_forcing(config(teacher_dir, tmp_path, steps=2, denoise_steps=3))


def test_bad_teacher_and_block_size_are_one_line_errors(teacher_dir, tmp_path, capsys):
    other = save_tiny(tmp_path / "fpb2", frames_per_block=2)
    base = ["distill", "self-forcing", "--out", str(tmp_path / "x")]
    assert main([*base, "--teacher", "shapes-flux", "--init", "teacher"]) == 2
    assert main([*base, "--teacher", str(teacher_dir), "--init", str(other)]) == 2
    assert main([*base, "--teacher", str(teacher_dir), "--init", "teacher", "--frames", "1"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("stretto: error:")]
    assert len(lines) == 3
    assert "expected a 'world-dit'" in lines[0]
    assert "2 frame(s) per block" in lines[1] and "1" in lines[1]
    assert "frames (1)" in lines[2] and "at least two blocks" in lines[2]
