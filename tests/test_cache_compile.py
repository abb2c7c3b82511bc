"""A cached model under torch.compile: its blocks compile once, not once per step (compiled.py says why blocks)."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import stretto
from stretto.cache import compile_blocks

torch.set_num_threads(1)

PROMPTS = ["red circle", "small blue square left of green triangle"]
KW = dict(sampler="euler", guidance=3.0, seeds=[0, 1])
# one per block kind (double, single stream), again with a dynamic rows / tokens dimension, and per-row
# decisions may first meet a smaller row count as a static shape before dynamo makes the dimension dynamic
MAX_GRAPHS = 10


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def generate(net, steps: int, spec: str | None) -> torch.Tensor:
    return stretto.generate(net, PROMPTS, steps=steps, cache=spec, **KW).images


@pytest.mark.parametrize(
    "spec",
    [None, "fora:interval=2", "dbcache:first=1,last=1,threshold=0.3,warmup=1", "toca:interval=3,ratio=0.25"],
)
def test_cached_blocks_compile_once_whatever_the_steps(spec):
    torch._dynamo.reset()
    counters.clear()
    net = stretto.load("shapes-flux")
    eager = generate(net, 12, spec)
    compile_blocks(net, backend="eager")  # dynamo's tracing and guards without code generation: fast
    generate(net, 8, spec)  # compiles each block kind, and for row / token subsets their dynamic shapes
    after_warmup = graphs()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = generate(net, 12, spec)  # more steps, new decisions: no recompile
    assert 0 < after_warmup == graphs() <= MAX_GRAPHS
    assert torch.equal(compiled, eager)


@pytest.mark.slow
def test_cached_blocks_compile_with_inductor_once():
    torch._dynamo.reset()
    counters.clear()
    net = stretto.load("shapes-flux")
    spec = "dbcache:first=1,last=1,threshold=0.3,warmup=1"
    eager = generate(net, 12, spec)
    compile_blocks(net)
    generate(net, 8, spec)
    after_warmup = graphs()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = generate(net, 12, spec)
    assert 0 < after_warmup == graphs() <= MAX_GRAPHS
    assert torch.allclose(compiled, eager, atol=1e-3)
