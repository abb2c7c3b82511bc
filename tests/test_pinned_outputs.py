"""Outputs pinned across refactors: `generate` (with and without every cache family), text decoding (every rule x
cache) and world streams (kv-rolling, kv, recompute) on the shipped weights hash to what they gave before the
code moved into its current layout (hashes recorded on 2026-11-30 from the previous layout, in
pinned_outputs.json).

Images and frames are hashed as the uint8 pixels the CLI writes; text as token ids and decoding counts.
Regenerate the file only for an intended change of output: `python tests/test_pinned_outputs.py --write`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

import stretto
from stretto.data.shapes import to_uint8

PINNED = Path(__file__).with_name("pinned_outputs.json")
PROMPTS = ["a red circle left of a blue square", "a small green triangle at the top"]
IMAGE_CASES = [("dpm++2m", 8, None), ("euler", 20, None)] + [
    ("euler", 20, c)
    for c in [
        "none",
        "fora:interval=3",
        "taylor:order=1,interval=4",
        "teacache:threshold=0.2",
        "firstblock:threshold=0.2",
        "dbcache:first=1,threshold=0.1",
        "delta",
        "gatedtaylor",
        "toca:interval=4,ratio=0.1",
        "ras:ratio=0.1,full_every=4",
    ]
]
TEXT_PROMPTS = ["dup:abcdefghijklm=", "rev:streamingdiff=", "copy:helloworldabc="]
TEXT_RULES = ["lowconf:tokens=1", "threshold:tau=0.9", "threshold:tau=0.7", "factor:f=1"]
TEXT_CACHES = {
    "text-masked": [
        "none", "prefix", "dual", "dual:every=4", "dual:drift=0.05", "dual:drift=0.02,layer=2", "dual:delay",
        "prefix:every=3,delay",
    ],
    "text-block": ["none", "block", "block:fuse"],
}  # fmt: skip
STREAM_ACTIONS = "RRRUULLDDN"
STAT_KEYS = ("nfe", "steps", "positions", "refreshes", "blocks", "cache_bytes")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _pixels(images: torch.Tensor) -> str:
    return _sha(to_uint8(images).tobytes())


def image_outputs() -> dict[str, str]:
    model = stretto.load("shapes-flux")
    out = {}
    for sampler, steps, cache in IMAGE_CASES:
        result = stretto.generate(model, PROMPTS, steps=steps, sampler=sampler, seeds=3, cache=cache)
        out[f"image|{sampler}|{steps}|{cache}"] = _pixels(result.images)
    return out


def text_outputs() -> dict[str, str]:
    out = {}
    for name, caches in TEXT_CACHES.items():
        lm = stretto.load(name)
        for rule in TEXT_RULES:
            for cache in caches:
                r = stretto.generate_text(lm, TEXT_PROMPTS, decode=rule, cache=cache)
                counts = r.stats.to_dict()
                stats = json.dumps([counts[k] for k in STAT_KEYS])
                out[f"text|{name}|{rule}|{cache}"] = _sha(r.canvas.cpu().numpy().tobytes() + stats.encode())
    return out


def stream_outputs() -> dict[str, str]:
    out = {}
    for name in ("world-sf", "world-tf"):
        model = stretto.load(name)
        for mode in ("kv-rolling", "kv", "recompute"):
            settings = {} if mode == "kv-rolling" else {"window": None}
            if mode == "kv":
                settings["max_frames"] = 40
            frames = stretto.stream_world(model, STREAM_ACTIONS, frames=32, mode=mode, **settings)
            out[f"stream|{name}|{mode}"] = _pixels(torch.cat([f.pixels for f in frames]))
    return out


def all_outputs() -> dict[str, str]:
    return {**image_outputs(), **text_outputs(), **stream_outputs()}


@pytest.mark.parametrize("outputs", [image_outputs, text_outputs, stream_outputs], ids=["image", "text", "stream"])
def test_outputs_match_the_pinned_hashes(outputs):
    pinned = json.loads(PINNED.read_text())
    got = outputs()
    assert got, "no outputs computed"
    changed = sorted(k for k, v in got.items() if pinned.get(k) != v)
    assert not changed, f"outputs changed for {changed}"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        PINNED.write_text(json.dumps(all_outputs(), indent=1, sort_keys=True) + "\n")
        print(f"wrote {PINNED}")
