"""The shared training loop: a run interrupted and resumed from its saved state ends where an unbroken run ends."""

from types import SimpleNamespace

import pytest
import torch

from stretto.train.loop import learning_rate, train_loop


def _config(out):
    return SimpleNamespace(out=str(out), steps=6, lr=1e-2, warmup=2, weight_decay=0.01, ema_decay=0.9,
                           save_every=2, seed=0)  # fmt: skip


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))


def _loss(model, step, gen):
    x = torch.randn(16, 4, generator=gen)
    return ((model(x) - x.flip(-1)) ** 2).mean()


def _run(out, crash_at=None):
    exported = {}

    def loss(model, step, gen):
        if step == crash_at:
            raise KeyboardInterrupt
        return _loss(model, step, gen)

    def export(ema, step):
        exported[step] = {k: v.clone() for k, v in ema.state_dict().items()}

    train_loop(_model(), _config(out), loss, export, desc="toy")
    return exported


def test_resume_matches_an_uninterrupted_run(tmp_path):
    straight = _run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", crash_at=3)  # dies after the state of step 2 was saved
    resumed = _run(tmp_path / "b")
    assert sorted(straight) == [2, 4, 6] and sorted(resumed) == [4, 6]
    for key, value in straight[6].items():
        assert torch.equal(value, resumed[6][key]), key


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    cfg = _config("unused")
    rates = [learning_rate(cfg, s) for s in range(cfg.steps + 1)]
    assert rates[0] == pytest.approx(cfg.lr / 2) and rates[1] == pytest.approx(cfg.lr)
    assert all(a >= b for a, b in zip(rates[1:], rates[2:], strict=False))
    assert rates[-1] == pytest.approx(0.1 * cfg.lr)


def test_train_image_smoke_exports_a_loadable_checkpoint(tmp_path):
    from stretto import checkpoints
    from stretto.train.image import ImageTrainConfig, train_image

    cfg = ImageTrainConfig(out=str(tmp_path), steps=2, batch_size=4, save_every=1, single_blocks=1, double_blocks=1)
    folder = train_image(cfg)
    model = checkpoints.load(folder, kind="shapes-flux")
    assert len(model.blocks) == 2
    assert "stretto train image --steps 2" in checkpoints.read_config(folder)["train_command"]
