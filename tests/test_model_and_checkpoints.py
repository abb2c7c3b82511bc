import json

import pytest
import torch
from transformers import T5EncoderModel

from stretto import checkpoints
from stretto.models.shapes_flux import ShapesFlux


def test_pack_unpack_roundtrip(tiny_flux):
    x = torch.randn(2, 3, 32, 32)
    tokens = tiny_flux.pack(x)
    assert tokens.shape == (2, 64, 48)
    assert torch.equal(tiny_flux.unpack(tokens), x)


def test_forward_shape_and_blocks(tiny_flux):
    cond = tiny_flux.encode_prompts(["a red circle left of a blue square", ""])
    v = tiny_flux(torch.randn(2, 3, 32, 32), torch.tensor(0.5), cond)
    assert v.shape == (2, 3, 32, 32) and torch.isfinite(v).all()
    assert len(tiny_flux.blocks) == 3


def test_checkpoint_roundtrip_is_exact(tiny_flux, tmp_path):
    checkpoints.save(tiny_flux, tmp_path / "m", train_command="test")
    loaded = checkpoints.load(tmp_path / "m")
    assert isinstance(loaded, ShapesFlux)
    for (k, a), (_, b) in zip(tiny_flux.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert json.loads((tmp_path / "m" / "config.json").read_text())["kind"] == "shapes-flux"


def test_fp16_storage_loads_as_fp32(tiny_flux, tmp_path):
    checkpoints.save(tiny_flux, tmp_path / "m", dtype=torch.float16)
    loaded = checkpoints.load(tmp_path / "m")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_missing_checkpoint_names_shipped_models(tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoint at .*shipped models: .*shapes-flux"):
        checkpoints.load(tmp_path / "nothing")


def test_corrupt_checkpoint_is_a_clear_error(tiny_flux, tmp_path):
    checkpoints.save(tiny_flux, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(checkpoints.CheckpointError, match="corrupt checkpoint"):
        checkpoints.load(tmp_path / "m")


def test_wrong_kind_is_a_clear_error(tiny_flux, tmp_path):
    checkpoints.save(tiny_flux, tmp_path / "m")
    with pytest.raises(checkpoints.CheckpointError, match="is a 'shapes-flux', expected a 'shapes-classifier'"):
        checkpoints.load(tmp_path / "m", kind="shapes-classifier")


def test_shipped_models_load_offline():
    model = checkpoints.load("shapes-flux")
    assert isinstance(model, ShapesFlux)
    assert sum(p.numel() for p in model.parameters()) < 3_000_000
    classifier = checkpoints.load("shapes-classifier")
    assert classifier.kind == "shapes-classifier"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([1, 2], r"m/config.json must hold a JSON object, got \[1, 2\]"),
        ("flux", r"m/config.json must hold a JSON object, got \"flux\""),
        ({"kind": "shapes-flux"}, r"m/config.json has no 'config' entry"),
        ({"kind": "shapes-flux", "config": [4]}, r"m/config.json: 'config' must be a JSON object, got \[4\]"),
        ({"kind": "shapes-flux", "config": {"heads": -2}}, r"m/config.json: config.heads is -2; sizes and ids must"),
        ({"kind": "shapes-flux", "config": {"axes_dims_rope": [4, -6, 6]}}, r"config.axes_dims_rope is \[4, -6, 6\]"),
        (
            {"kind": "shapes-flux", "config": {"vocab": ["a"], "colour": 3}},
            r"m/config.json does not build a shapes-flux",
        ),
    ],
)
def test_a_broken_config_is_a_one_line_error_naming_the_file(config, message, tiny_flux, tmp_path):
    checkpoints.save(tiny_flux, tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(checkpoints.CheckpointError, match=message) as caught:
        checkpoints.load(tmp_path / "m")
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)


def test_a_kind_can_be_one_of_several(tiny_flux, tmp_path):
    checkpoints.save(tiny_flux, tmp_path / "m")
    assert isinstance(checkpoints.load(tmp_path / "m", kind=("shapes-flux", "world-dit")), ShapesFlux)
    with pytest.raises(
        checkpoints.CheckpointError, match="is a 'shapes-flux', expected one of 'masked-lm', 'block-lm'"
    ):
        checkpoints.check_kind(tmp_path / "m", ("masked-lm", "block-lm"))


def test_t5_prompt_encoder_model_round_trips_through_a_checkpoint(tmp_path):
    from dataclasses import replace

    from conftest import tiny_flux_config

    torch.manual_seed(0)
    model = ShapesFlux(replace(tiny_flux_config(), text_encoder="t5", text_layers=2)).eval()
    assert isinstance(model.prompt_encoder.t5, T5EncoderModel)  # transformers' class, not a copy
    folder = checkpoints.save(model, tmp_path / "t5")  # T5's tied embedding tensors are written once each
    loaded = checkpoints.load(folder)
    x, sigma = torch.randn(2, 3, 32, 32), torch.tensor(0.5)
    prompts = ["a small red circle on the left", "a red circle left of a blue square"]
    with torch.no_grad():
        assert torch.equal(
            model(x, sigma, model.encode_prompts(prompts)), loaded(x, sigma, loaded.encode_prompts(prompts))
        )
