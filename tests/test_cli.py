"""The CLI's contract: PNGs out, and one clear line with exit code 2 for every kind of bad input."""

import pytest
from PIL import Image

from stretto import checkpoints
from stretto.cli import main


@pytest.fixture
def tiny_checkpoint(tiny_flux, tmp_path):
    return str(checkpoints.save(tiny_flux, tmp_path / "tiny"))


def test_generate_writes_a_png(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "img.png"
    code = main(
        [
            "generate",
            "a red circle left of a blue square",
            "--steps",
            "2",
            "--sampler",
            "euler",
            "--seed",
            "0",
            "--out",
            str(out),
            "--model",
            tiny_checkpoint,
        ]
    )
    assert code == 0 and Image.open(out).size == (128, 128)
    assert "2 model calls" in capsys.readouterr().out


def test_generate_grid_for_several_prompts_and_seeds(tiny_checkpoint, tmp_path):
    out = tmp_path / "grid.png"
    code = main(
        [
            "generate",
            "a red circle left of a blue square",
            "a small blue square on the left",
            "--steps",
            "1",
            "--num-seeds",
            "3",
            "--out",
            str(out),
            "--model",
            tiny_checkpoint,
        ]
    )
    width, height = Image.open(out).size
    assert code == 0 and width > 3 * 96 and height > 2 * 96


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "a red hexagon"], "unknown prompt word(s) ['hexagon']; the vocabulary is: a above"),
        (["generate", "a red circle on the left", "--steps", "0"], "steps must be an integer >= 1, got 0"),
        (["generate", "a red circle on the left", "--sampler", "ddim"], "unknown sampler 'ddim'"),
        (
            ["generate", "a red circle on the left", "--guidance", "99"],
            "guidance must be in [0, 20], got 99.0",
        ),
        (["generate", "a red circle on the left", "--device", "tpu7"], "unknown device 'tpu7'"),
        (
            ["generate", "a red circle on the left", "--model", "/no/such/dir"],
            "no checkpoint at '/no/such/dir'",
        ),
        (["generate", "a red circle on the left", "--num-seeds", "0"], "--num-seeds must be >= 1"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, tiny_checkpoint, capsys):
    if "--model" not in args:
        args = [*args, "--model", tiny_checkpoint]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_corrupt_checkpoint_is_one_clear_line(tiny_checkpoint, capsys):
    with open(f"{tiny_checkpoint}/model.safetensors", "wb") as f:
        f.write(b"garbage")
    assert main(["generate", "a red circle on the left", "--model", tiny_checkpoint]) == 2
    assert "corrupt checkpoint" in capsys.readouterr().err
