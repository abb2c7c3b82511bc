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


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("stretto: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_every_flag_of_every_command_has_help():
    import argparse

    from stretto.cli import build_parser

    def walk(parser: argparse.ArgumentParser, name: str):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    yield f"{name} {choice.dest}", choice.help
                for sub_name, sub in action.choices.items():
                    yield from walk(sub, f"{name} {sub_name}")
            else:
                yield f"{name} {'/'.join(action.option_strings) or action.dest}", action.help

    helps = dict(walk(build_parser(), "stretto"))
    assert len(helps) > 100 and "stretto bench cache --wall-check" in helps
    assert [flag for flag, text in helps.items() if not (text or "").strip()] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["generate", "a red circle", "--model", "world-sf"],
            "is a 'world-dit', expected one of 'shapes-flux', 'shapes-unet'",
        ),
        (["text", "dup:abc=", "--model", "shapes-flux"], "expected one of 'masked-lm', 'block-lm'"),
        (["stream", "--model", "text-masked"], "is a 'masked-lm', expected a 'world-dit'"),
        (["bench", "samplers", "--model", "text-block"], "is a 'block-lm', expected a 'shapes-flux'"),
        (["calibrate", "cache", "teacache", "--model", "world-tf"], "expected a 'shapes-flux'"),
    ],
)
def test_a_model_of_the_wrong_kind_names_the_kinds_the_command_takes(args, message, capsys):
    assert main(args) == 2
    assert message in _one_error_line(capsys)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "bogus"], "unknown text task(s) ['bogus']; allowed: ['copy'"),
        (["--tasks", "long", "--gen-length", "100"], "--gen-length 100 cannot hold the answers of --tasks long"),
    ],
)
def test_bench_text_names_a_bad_task_list_or_a_canvas_too_short_for_it(args, message, capsys):
    assert main(["bench", "text", "--models", "text-masked", *args]) == 2
    assert message in _one_error_line(capsys)


def test_an_unwritable_output_names_the_path(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    args = ["generate", "a red circle", "--steps", "1", "--model", tiny_checkpoint]
    in_a_file = tmp_path / "file"
    in_a_file.write_text("")
    assert main([*args, "--out", str(in_a_file / "x.png")]) == 2
    assert str(in_a_file) in _one_error_line(capsys)

    def refuse(self, path, *a, **k):  # a read-only folder (tests may run as root, which writes anywhere)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("PIL.Image.Image.save", refuse)
    out = tmp_path / "read-only" / "x.png"
    assert main([*args, "--out", str(out)]) == 2
    assert f"{out}: Permission denied" in _one_error_line(capsys)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([1, 2], r"config.json must hold a JSON object, got \[1, 2\]"),
        ({"kind": "shapes-flux"}, r"config.json has no 'config' entry"),
        ({"kind": "shapes-flux", "config": {"heads": -2}}, r"config.json: config.heads is -2; sizes and ids must be"),
    ],
)
def test_a_broken_checkpoint_config_is_one_clear_line(config, message, tiny_checkpoint, capsys):
    import json
    import re

    with open(f"{tiny_checkpoint}/config.json", "w") as f:
        json.dump(config, f)
    assert main(["generate", "a red circle", "--model", tiny_checkpoint]) == 2
    assert re.search(message, _one_error_line(capsys))


@pytest.mark.parametrize("prompt", ["", "   "])
def test_an_empty_prompt_is_an_error_that_points_to_unconditional(prompt, tiny_checkpoint, capsys):
    assert main(["generate", prompt, "--model", tiny_checkpoint]) == 2
    err = _one_error_line(capsys)
    assert f"prompt {prompt!r} is" in err and "stretto generate --unconditional" in err


def test_unconditional_samples_are_asked_for_explicitly(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "u.png"
    args = ["generate", "--unconditional", "--steps", "2", "--num-seeds", "2", "--model", tiny_checkpoint]
    assert main([*args, "--out", str(out)]) == 0
    assert "2 model calls" in capsys.readouterr().out  # guidance 0: one branch per call
    assert Image.open(out).size[0] > 2 * 96
    assert main([*args, "a red circle"]) == 2
    assert "--unconditional takes no prompts" in _one_error_line(capsys)
    assert main(["generate", "--model", tiny_checkpoint]) == 2
    assert "give at least one prompt, or --unconditional" in _one_error_line(capsys)


@pytest.mark.parametrize(
    ("command", "high"),
    [
        (["generate", "a red circle"], 2**63 - 1),
        (["stream"], 2**63 - 1),
        (["search", "cache"], 2**63 - 1),
        (["train", "image"], 2**32 - 1),
        (["train", "classifier"], 2**32 - 1),
        (["train", "text"], 2**32 - 1),
        (["train", "world"], 2**32 - 1),
    ],
)
@pytest.mark.parametrize("seed", ["18446744073709551616", "-1"])
def test_seeds_out_of_range_name_the_flag_and_the_range(command, high, seed, capsys):
    assert main([*command, "--seed", seed]) == 2
    assert f"--seed must be an integer in [0, {high}], got {seed}" in _one_error_line(capsys)


def test_generate_checks_the_last_seed_too(capsys):
    assert main(["generate", "a red circle", "--seed", str(2**63 - 1), "--num-seeds", "2"]) == 2
    assert "--seed + --num-seeds - 1 must be <=" in _one_error_line(capsys)


def test_ctrl_c_during_a_stream_writes_the_partial_gif_and_exits_130(tmp_path, monkeypatch, capsys):
    import stretto.pipelines.world as world_pipeline

    real = world_pipeline.stream_world

    def interrupted_after_three(*args, **kwargs):
        for frame in real(*args, **kwargs):
            if frame.index == 3:
                raise KeyboardInterrupt
            yield frame

    monkeypatch.setattr(world_pipeline, "stream_world", interrupted_after_three)
    out = tmp_path / "w.gif"
    assert main(["stream", "--frames", "8", "--actions", "RRUL", "--out", str(out)]) == 130
    assert Image.open(out).n_frames == 3
    err = capsys.readouterr().err
    assert f"stretto: interrupted; {out} holds the 3 frames generated so far" in err and "Traceback" not in err
