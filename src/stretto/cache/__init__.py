"""Feature caching: one hook mechanism over a transformer's block stack, and small policies deciding per step.

    import stretto.cache as cache
    cache.apply(model, cache.Taylor(order=2, interval=3))   # or cache.apply(model, "taylor:order=2")
    cache.reset(model, sigmas)                               # at the start of every generation
    with cache.step(model, sigma, branches=("cond", "uncond")):
        v = model(torch.cat([x, x]), sigma, both)            # batched CFG: first half cond, second uncond
    print(cache.summary(model))
    cache.remove(model)

`model` may be a stretto model, a diffusers transformer (Flux, SD3, DiT, Wan, ...) or a diffusers
pipeline (its `.transformer` is used). mechanism.py maps the mechanism's files; block_list.py says how the
stack is taken over, stack.py what a policy sees.
"""

from stretto.cache.accounting import CacheSummary, StepRecord
from stretto.cache.delta_dit import DeltaDiT
from stretto.cache.first_block import DBCache, FirstBlock
from stretto.cache.fora import FORA
from stretto.cache.gated_taylor import GatedTaylor
from stretto.cache.magcache import MagCache
from stretto.cache.mechanism import (
    applied,
    apply,
    get_handle,
    remove,
    reset,
    step,
    summary,
)
from stretto.cache.none import NoCache
from stretto.cache.policy import POLICIES, CachePolicy, available, parse_policy
from stretto.cache.ras import RAS
from stretto.cache.schedule import Schedule
from stretto.cache.taylor import Taylor
from stretto.cache.teacache import TeaCache
from stretto.cache.toca import ToCa

__all__ = [
    "POLICIES",
    "CachePolicy",
    "CacheSummary",
    "DBCache",
    "DeltaDiT",
    "FORA",
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
    "get_handle",
    "parse_policy",
    "remove",
    "reset",
    "step",
    "summary",
]
