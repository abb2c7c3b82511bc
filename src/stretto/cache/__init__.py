"""Feature caching: one hook mechanism over a transformer's block stack, and small policies deciding per step.

    import stretto.cache as cache
    cache.apply(pipe, "fora:interval=3")      # any diffusers pipeline: fresh state every call, steps from its
    image = pipe(prompt, generator=g).images  # scheduler; summary(pipe) reports the last call
    cache.remove(pipe)

    cache.apply(model, cache.Taylor(order=2, interval=3))   # a bare model driven by your own loop
    cache.reset(model, sigmas)       # every generation; the schedule in the scale of the model's timestep
    with cache.step(model, sigma, branches=("cond", "uncond")):
        v = model(torch.cat([x, x]), sigma, both)            # batched CFG: first half cond, second uncond
    print(cache.summary(model))
    cache.remove(model)

A stream (block-autoregressive video) runs one denoising loop per block of frames: `cache.next_loop(model, sigmas)`
starts each (the state carries over only for policies that reuse across blocks, `crossblock`), and the commit
pass runs under `with cache.bypass(model):`, every block computed (stretto.pipelines.world).

`model` may be a stretto model, a diffusers transformer (every class in families.py: Flux, SD3, DiT, Wan,
CogVideoX, HunyuanDiT, ...; `families.markdown_table()` lists them) or a diffusers pipeline. Without
`step(...)` the cache reads the model call's own timestep (keyword or positional). mechanism.py maps the
mechanism's files; block_list.py says how the stack is taken over, stack.py what a policy sees.
Under torch.compile, compile the blocks (`cache.compile_blocks(model)`), not the whole model (compiled.py).
"""

from stretto.cache.accounting import CacheSummary, StepRecord
from stretto.cache.compiled import compile_blocks
from stretto.cache.cross_block import CrossBlock
from stretto.cache.deepcache import DeepCache
from stretto.cache.delta_dit import DeltaDiT
from stretto.cache.faster_diffusion import FasterDiffusion
from stretto.cache.first_block import DBCache, FirstBlock
from stretto.cache.fora import FORA
from stretto.cache.gated_taylor import GatedTaylor
from stretto.cache.magcache import MagCache
from stretto.cache.mechanism import (
    applied,
    apply,
    bypass,
    get_handle,
    next_loop,
    remove,
    reset,
    step,
    summary,
)
from stretto.cache.none import NoCache
from stretto.cache.policy import POLICIES, CachePolicy, available, parse_policy, step_only_policies
from stretto.cache.ras import RAS
from stretto.cache.schedule import Schedule
from stretto.cache.taylor import Taylor
from stretto.cache.teacache import TeaCache
from stretto.cache.toca import ToCa

__all__ = [
    "POLICIES",
    "CachePolicy",
    "CacheSummary",
    "CrossBlock",
    "DBCache",
    "DeepCache",
    "DeltaDiT",
    "FORA",
    "FasterDiffusion",
    "FirstBlock",
    "GatedTaylor",
    "MagCache",
    "NoCache",
    "RAS",
    "Schedule",
    "StepRecord",
    "Taylor",
    "TeaCache",
    "ToCa",
    "apply",
    "applied",
    "available",
    "step_only_policies",
    "bypass",
    "compile_blocks",
    "get_handle",
    "next_loop",
    "parse_policy",
    "remove",
    "reset",
    "step",
    "summary",
]
