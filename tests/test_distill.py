"""Distillation on tiny models: the DMD pieces, the two-time-scale loop, backward simulation, resume, students."""

import json

import pytest
import torch

import stretto
from stretto import checkpoints
from stretto.cli import main
from stretto.distill import dmd
from stretto.distill.flow_map import FlowMapConfig, FlowMapTrainer, distill_flow_map
from stretto.distill.image_dmd import DMDConfig, DMDTrainer, distill_dmd
from stretto.train.state import ResumeError

PROMPTS = ["a small red circle on the left", "a blue square above a green triangle"]


@pytest.fixture
def teacher_dir(tmp_path, tiny_flux):
    return str(checkpoints.save(tiny_flux, tmp_path / "teacher"))


def dmd_config(teacher_dir, tmp_path, **kw) -> DMDConfig:
    return DMDConfig(**{"teacher": teacher_dir, "out": str(tmp_path / "dmd"), "steps": 2, "batch_size": 2,
                        "fake_updates": 2, "save_every": 1, **kw})  # fmt: skip


def test_dmd_gradient_is_zero_when_fake_and_real_scores_agree():
    x0, pred = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    assert torch.equal(dmd.dmd_gradient(x0, pred, pred), torch.zeros_like(x0))
    grad = dmd.dmd_gradient(x0, pred, pred + 0.1)
    # p_real - p_fake = fake - real: the update -grad moves samples toward the real prediction
    assert torch.all(grad > 0)


def test_dmd_loss_gradient_is_the_given_direction():
    x0 = torch.randn(2, 3, 4, 4, requires_grad=True)
    grad = torch.randn(2, 3, 4, 4)
    dmd.dmd_loss(x0, grad).backward()
    torch.testing.assert_close(x0.grad, grad / grad.numel())


def test_fake_and_generator_updates_follow_the_configured_ratio(teacher_dir, tmp_path):
    trainer = DMDTrainer(dmd_config(teacher_dir, tmp_path, fake_updates=3))
    for step in range(2):
        trainer.step(step)
    assert (trainer.fake_steps_done, trainer.generator_steps_done) == (6, 2)


def test_fake_score_and_discriminator_losses_decrease(teacher_dir, tmp_path):
    trainer = DMDTrainer(dmd_config(teacher_dir, tmp_path, fake_lr=3e-3, batch_size=4))
    first = trainer.fake_update(0, 0)
    for _ in range(15):
        last = trainer.fake_update(0, 0)  # the same batch and noise: a loss that can only go down if it learns
    assert last["fake"] < first["fake"] and last["disc"] < first["disc"]


def test_generator_update_moves_samples_along_the_dmd_direction(teacher_dir, tmp_path):
    trainer = DMDTrainer(dmd_config(teacher_dir, tmp_path, lr=1e-3, grid=[1.0]))
    # Make the scores disagree: the fake score is trained a little on the (teacher-initialised) generator.
    for part in range(3):
        trainer.fake_update(0, part)
    prompts = PROMPTS

    def sample():
        return trainer.generate(prompts, torch.Generator().manual_seed(5), with_grad=False)

    before = sample()
    with torch.no_grad():
        grad = dmd.dmd_gradient(
            before,
            *[p(dmd.noised(before, torch.full((2,), 0.5), torch.zeros_like(before)), torch.full((2,), 0.5))
              for p in (trainer.real_x0(prompts), trainer.fake_x0(prompts))],
        )  # fmt: skip
    assert grad.abs().mean() > 0
    trainer.cfg.gan_generator_weight = 0.0
    for step in range(3):
        trainer.generator_update(step)
    after = sample()
    # The surrogate 0.5 ||x0 - sg(x0 - grad)||^2 drops when samples move along -grad on average.
    assert float(((after - before) * -grad).sum()) > 0


def test_backward_simulation_feeds_the_generator_its_own_outputs(teacher_dir, tmp_path):
    trainer = DMDTrainer(dmd_config(teacher_dir, tmp_path))
    grid = trainer.cfg.grid
    seed = next(s for s in range(100) if int(torch.randint(4, (1,), generator=torch.Generator().manual_seed(s))) >= 2)
    calls, offset = [], {"value": 0.0}

    def record(module, args, output):
        calls.append(args[0].clone())
        return output + offset["value"] if len(calls) == 1 else output

    hook = trainer.generator.register_forward_hook(record)
    trainer.generate(PROMPTS, torch.Generator().manual_seed(seed), with_grad=False)
    plain = list(calls)
    calls.clear()
    offset["value"] = 0.5  # shift the first prediction's velocity: x0 moves by -sigma0 * 0.5
    trainer.generate(PROMPTS, torch.Generator().manual_seed(seed), with_grad=False)
    hook.remove()
    assert len(plain) >= 3  # a rollout of >= 2 grid steps, then the prediction trained on
    expected = -(1 - grid[1]) * grid[0] * 0.5
    torch.testing.assert_close(calls[1] - plain[1], torch.full_like(plain[1], expected), atol=1e-5, rtol=0)


def test_resumed_run_equals_an_uninterrupted_one(teacher_dir, tmp_path):
    whole = distill_dmd(dmd_config(teacher_dir, tmp_path / "a", steps=2))
    distill_dmd(dmd_config(teacher_dir, tmp_path / "b", steps=1))
    resumed = distill_dmd(dmd_config(teacher_dir, tmp_path / "b", steps=2))
    a, b = checkpoints.load(whole).state_dict(), checkpoints.load(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_with_other_settings_is_refused(teacher_dir, tmp_path):
    distill_dmd(dmd_config(teacher_dir, tmp_path, steps=1))
    with pytest.raises(ResumeError, match="fake_updates: saved 2, given 3"):
        distill_dmd(dmd_config(teacher_dir, tmp_path, steps=2, fake_updates=3))


def test_continuing_from_a_run_equals_an_uninterrupted_one_and_keeps_its_history(teacher_dir, tmp_path):
    whole = distill_dmd(dmd_config(teacher_dir, tmp_path / "a", steps=2))
    distill_dmd(dmd_config(teacher_dir, tmp_path / "b", steps=1))
    parent = str(tmp_path / "b" / "dmd")
    continued = distill_dmd(dmd_config(teacher_dir, tmp_path / "c", steps=2, continue_from=parent))
    a, c = checkpoints.load(whole).state_dict(), checkpoints.load(continued).state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)
    history = json.loads((continued / "config.json").read_text())["training_history"]
    assert history[0].startswith("steps 0-1: stretto distill dmd2") and "--continue-from" not in history[0]
    assert history[1].startswith("steps 1-2: stretto distill dmd2") and f"--continue-from {parent}" in history[1]
    # a continuation may change what a resume may not; its own resume then holds to the new settings
    other = distill_dmd(dmd_config(teacher_dir, tmp_path / "d", steps=2, guidance=2.0, continue_from=parent))
    assert json.loads((other / "config.json").read_text())["config"]["student"]["guidance"] == 2.0
    with pytest.raises(ResumeError, match="guidance: saved 2.0, given 2.5"):
        distill_dmd(dmd_config(teacher_dir, tmp_path / "d", steps=3, guidance=2.5, continue_from=parent))


def test_continuing_from_a_run_of_another_kind_is_a_clear_error(teacher_dir, tmp_path):
    fm = FlowMapConfig(teacher=teacher_dir, out=str(tmp_path / "fm"), steps=1, batch_size=2, save_every=1)
    distill_flow_map(fm)
    with pytest.raises(ResumeError, match="holds no 'generator' state .*a run of another kind"):
        distill_dmd(dmd_config(teacher_dir, tmp_path, steps=2, continue_from=fm.out))
    with pytest.raises(ResumeError, match="is at step 1: --steps must be more, got 1"):
        distill_flow_map(FlowMapConfig(**{**fm.__dict__, "out": str(tmp_path / "fm2"), "continue_from": fm.out}))
    with pytest.raises(ResumeError, match="not a run folder"):
        distill_dmd(dmd_config(teacher_dir, tmp_path / "x", steps=2, continue_from=str(tmp_path / "nowhere")))


def test_distilling_from_a_wrong_checkpoint_is_a_clear_error(teacher_dir, tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="expected a 'shapes-flux'"):
        DMDTrainer(dmd_config("shapes-classifier", tmp_path))
    student = distill_dmd(dmd_config(teacher_dir, tmp_path, steps=1))
    with pytest.raises(checkpoints.CheckpointError, match="itself a distilled dmd2 student"):
        DMDTrainer(dmd_config(str(student), tmp_path / "again"))


def test_dmd_student_samples_on_its_grid_with_one_call_a_step(teacher_dir, tmp_path):
    student = stretto.load(distill_dmd(dmd_config(teacher_dir, tmp_path, steps=1)))
    for steps in (4, 2, 1):
        result = stretto.generate(student, PROMPTS, steps=steps, seeds=[3, 4])
        assert result.stats.model_calls == steps and result.stats.sampler == "dmd2"
    default = stretto.generate(student, PROMPTS, seeds=[3, 4])
    assert default.stats.steps == 4
    alone = stretto.generate(student, PROMPTS[:1], seeds=[3])
    # An image does not depend on its batch (up to the float rounding of another batch size).
    torch.testing.assert_close(alone.images[0], default.images[0], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="samples in 1, 2, 4 steps, not 3"):
        stretto.generate(student, PROMPTS, steps=3)
    with pytest.raises(ValueError, match="samples with 'dmd2', not 'euler'"):
        stretto.generate(student, PROMPTS, sampler="euler")
    with pytest.raises(ValueError, match=f"guidance {student.config.student['guidance']:g} baked in"):
        stretto.generate(student, PROMPTS, guidance=5.0)


def test_flow_map_starts_as_the_teacher_and_its_loss_decreases(teacher_dir, tmp_path, tiny_flux):
    cfg = FlowMapConfig(teacher=teacher_dir, out=str(tmp_path / "fm"), steps=1, batch_size=4, lr=3e-3)
    trainer = FlowMapTrainer(cfg)
    x, sigma = torch.randn(2, 3, 32, 32), torch.full((2,), 0.7)
    with torch.no_grad():
        cond = tiny_flux.encode_prompts(PROMPTS)
        torch.testing.assert_close(trainer.student(x, sigma, cond, sigma * 0.1), tiny_flux(x, sigma, cond))
    losses = [trainer.step(0)["loss"] for _ in range(12)]
    assert losses[-1] < losses[0]


def test_flow_map_rollout_rows_start_from_the_students_own_jump(teacher_dir, tmp_path, monkeypatch):
    from stretto.distill.students import data_batch

    seen = {}

    def batch_of(fraction):  # the (x_t, t) one update trains on
        cfg = FlowMapConfig(teacher=teacher_dir, out=str(tmp_path / f"fm{fraction}"), steps=1, batch_size=8,
                            rollout_fraction=fraction)  # fmt: skip
        trainer = FlowMapTrainer(cfg)
        real = trainer.targets

        def spy(x_t, t, r, prompts, diagonal):
            seen[fraction] = (x_t.clone(), t.clone(), prompts)
            return real(x_t, t, r, prompts, diagonal)

        monkeypatch.setattr(trainer, "targets", spy)
        trainer.step(3)
        return trainer, cfg

    _, cfg = batch_of(0.0)
    trainer, _ = batch_of(0.6)
    (plain, t, prompts), (rolled, t2, _) = seen[0.0], seen[0.6]
    assert torch.equal(t, t2)  # the same levels; only the inputs of the rollout rows differ
    rows = (rolled != plain).flatten(1).any(1)
    assert 0 < int(rows.sum()) < len(rows) and bool((t[rows] < 1).all())
    x0, _ = data_batch(cfg.seed, 3, 0, cfg.batch_size)
    view = (-1, 1, 1, 1)
    noise = (plain - (1 - t).view(view) * x0) / t.view(view)  # the update's own noise draw
    with torch.no_grad():
        cond = trainer.ema.encode_prompts([q for q, keep in zip(prompts, rows.tolist(), strict=True) if keep])
        ones = torch.ones_like(t[rows])
        jump = noise[rows] - (1 - t[rows]).view(view) * trainer.ema(noise[rows], ones, cond, t[rows])
    torch.testing.assert_close(rolled[rows], jump, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"rollout_fraction must be in \[0, 1\), got 1.0"):
        FlowMapConfig(teacher=teacher_dir, out=str(tmp_path / "bad"), rollout_fraction=1.0)


def test_flow_map_student_takes_any_step_count(teacher_dir, tmp_path):
    student = stretto.load(distill_flow_map(
        FlowMapConfig(teacher=teacher_dir, out=str(tmp_path / "fm"), steps=1, batch_size=2, save_every=1)
    ))  # fmt: skip
    for steps in (1, 3):
        assert stretto.generate(student, PROMPTS, steps=steps).stats.model_calls == steps
    with pytest.raises(ValueError, match=r"any number of steps \(>= 1\), not 0"):
        stretto.generate(student, PROMPTS, steps=0)


def test_cli_distill_records_its_command(teacher_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["distill", "dmd2", "--teacher", teacher_dir, "--out", str(out), "--steps", "1", "--batch-size", "2",
            "--fake-updates", "1", "--grid", "1,0.5"]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads((out / "model" / "config.json").read_text())
    assert meta["config"]["student"]["sigmas"] == [1.0, 0.5]
    assert meta["train_command"].startswith("stretto distill dmd2") and "--grid 1,0.5" in meta["train_command"]
    assert main(["generate", "a small red circle on the left", "--model", str(out / "model"),
                 "--out", str(tmp_path / "x.png")]) == 0  # fmt: skip
    assert "dmd2 2 steps" in capsys.readouterr().out
    assert main([*argv[:-1], "1,0.9,0.2"]) == 2  # resuming with another grid
    assert "other settings" in capsys.readouterr().err


def test_bench_distill_rows_and_grid(teacher_dir, tmp_path):
    from stretto.bench.distill import run_distill_bench

    dmd_student = distill_dmd(dmd_config(teacher_dir, tmp_path, steps=1))
    flow_student = distill_flow_map(
        FlowMapConfig(teacher=teacher_dir, out=str(tmp_path / "fm"), steps=1, batch_size=2, save_every=1)
    )
    result = run_distill_bench(
        tmp_path / "d.json", tmp_path / "d.png", tmp_path / "g.png", teacher=teacher_dir,
        students=[str(dmd_student), str(flow_student)], num_images=4,
    )  # fmt: skip
    keys = {"model", "method", "steps", "nfe", "fid", "prompt_acc", "psnr_db_vs_teacher", "wall_s"}
    keys.add("speedup_vs_teacher")
    assert all(keys <= set(r) for r in result["rows"])
    got = [(r["method"], r["steps"], r["nfe"]) for r in result["rows"]]
    assert got == [("teacher", 50, 50), *[("dpm++2m", n, n) for n in (4, 2, 1)] * 2,
                   ("dmd2", 1, 1), ("dmd2", 2, 2), ("dmd2", 4, 4),
                   ("flowmap", 1, 1), ("flowmap", 2, 2), ("flowmap", 4, 4)]  # fmt: skip
    assert result["rows"][0]["psnr_db_vs_teacher"] is None and result["rows"][0]["speedup_vs_teacher"] == 1.0
    assert (tmp_path / "g.png").exists() and (tmp_path / "d.png").exists()
    assert json.loads((tmp_path / "d.json").read_text())["students"][str(dmd_student)]["method"] == "dmd2"


def test_feature_caches_apply_to_students(teacher_dir, tmp_path):
    student = stretto.load(distill_dmd(dmd_config(teacher_dir, tmp_path, steps=1)))
    plain = stretto.generate(student, PROMPTS, seeds=[1, 2])
    off = stretto.generate(student, PROMPTS, seeds=[1, 2], cache="none")
    assert torch.equal(plain.images, off.images)  # caching off is the plain student, bit for bit
    cached = stretto.generate(student, PROMPTS, seeds=[1, 2], cache="fora:interval=2")
    assert cached.stats.total_block_evals < plain.stats.total_block_evals


@pytest.mark.parametrize("name", ["shapes-flux-dmd4", "shapes-flux-dmd1", "shapes-flux-flowmap"])
def test_shipped_students_load_offline_and_sample_in_their_steps(name):
    student = stretto.load(name)
    assert student.config.student["teacher"] == "shapes-flux"
    result = stretto.generate(student, PROMPTS[:1], seeds=[0])
    assert result.stats.model_calls == student.config.student["default_steps"]
    assert result.images.abs().max() <= 1 and result.images.std() > 0.1  # an image, not a blank
