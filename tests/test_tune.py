"""The tuning runs behind `stretto calibrate cache` and `stretto search cache`, on a tiny random model."""

import json
from pathlib import Path

import pytest
import torch

import stretto.cache as cache
from stretto import checkpoints
from stretto.tune.calibrate import run_magcache_calibration, run_teacache_calibration
from stretto.tune.search import run_schedule_search

torch.set_num_threads(1)

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def committed_keys(name: str) -> list[str]:
    return list(json.loads((RESULTS / name).read_text()))


@pytest.fixture
def tiny_name(tiny_flux, tmp_path) -> str:
    return str(checkpoints.save(tiny_flux, tmp_path / "tiny"))


def test_teacache_calibration_writes_where_told(tiny_name, tmp_path):
    out_json, out_png = tmp_path / "out" / "teacache.json", tmp_path / "out" / "teacache.png"
    result = run_teacache_calibration(out_json, out_png, model=tiny_name, steps=4, num_prompts=2, degree=2)
    assert list(result) == committed_keys("calibrate-teacache.json")  # the JSON keys are a contract
    assert json.loads(out_json.read_text()) == result and out_png.stat().st_size > 0
    assert result["model"] == tiny_name and result["settings"] == {"steps": 4, "sampler": "euler", "guidance": 3.0,
                                                                   "seeds": 0}  # fmt: skip
    assert len(result["coefficients"]) == 3 and len(result["pairs"]["x"]) == 2 * 2 * 3  # prompts x CFG x steps-1
    assert cache.parse_policy(result["spec"]).coefficients == result["spec"].split("=", 1)[1]


def test_magcache_calibration_writes_nothing_unless_told(tiny_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    result = run_magcache_calibration(model=tiny_name, steps=4, num_prompts=1)
    assert sorted(tmp_path.rglob("*")) == before
    assert list(result) == committed_keys("calibrate-magcache.json")
    assert len(result["ratios"]) == 4 and result["ratios"][0] == 1.0
    assert cache.parse_policy(result["spec"]).ratios == result["spec"].split("=", 1)[1]


def test_schedule_search_records_front_and_command(tiny_name, tmp_path):
    out_json = tmp_path / "search.json"
    result = run_schedule_search(
        out_json, None, model=tiny_name, steps=3, num_prompts=1, population=4, generations=1, seed=5, progress=False
    )
    assert list(result) == committed_keys("cache-search.json")
    assert json.loads(out_json.read_text()) == result and not (tmp_path / "search.png").exists()
    assert result["seeds"] == [5] and result["search_seed"] == 5 and result["blocks"] == 3
    assert result["command"] == (
        f"stretto search cache --model {tiny_name} --steps 3 --sampler euler --guidance 3.0 --num-prompts 1 "
        "--population 4 --generations 1 --seed 5"
    )
    front = result["front"]
    assert front[-1]["psnr_db"] is None and front[-1]["compute_fraction"] == 1.0
    assert len(result["evaluated"]) == result["model_runs"] >= len(front)
    fractions = [row["compute_fraction"] for row in front]
    assert fractions == sorted(fractions)
    assert cache.parse_policy(f"schedule:pattern={front[0]['mask']}").mask.shape == (3, 3)  # steps x blocks


@pytest.mark.parametrize(
    ("run", "settings", "message"),
    [
        (run_teacache_calibration, {"degree": 11}, r"degree must be an integer in \[1, 10\], got 11"),
        (run_teacache_calibration, {"steps": 1}, r"calibration needs steps >= 2"),
        (run_magcache_calibration, {"num_prompts": 0}, r"num_prompts must be an integer >= 1, got 0"),
        (run_magcache_calibration, {"sampler": "nope"}, r"unknown sampler 'nope'"),
        (run_magcache_calibration, {"guidance": -1.0}, r"guidance must be in \[0, 20\], got -1.0"),
        (run_schedule_search, {"population": 3}, r"population must be an integer >= 4, got 3"),
        (run_schedule_search, {"generations": -1}, r"generations must be an integer >= 0, got -1"),
        (run_schedule_search, {"seed": -1}, r"seed must be an integer >= 0, got -1"),
    ],
)
def test_bad_settings_are_named_before_any_loading(run, settings, message):
    # A model that does not exist: the setting's error must come first, before the load would fail.
    with pytest.raises(ValueError, match=message):
        run(model="no-such-model", **settings)


def test_a_model_of_another_kind_is_refused():
    with pytest.raises(ValueError, match="expected a 'shapes-flux'"):
        run_magcache_calibration(model="world-tf", steps=4, num_prompts=1)
