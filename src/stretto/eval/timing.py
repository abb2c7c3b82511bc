"""Speed and cost accounting: wall time and peak memory of a block of code, block evaluations of a model.

Peak memory, by device:
- CUDA: `torch.cuda.max_memory_allocated` over the block (tensors only, after `reset_peak_memory_stats`).
- CPU (Linux): the process's peak resident set size over the block, read from VmHWM in
  /proc/self/status after resetting it through /proc/self/clear_refs; elsewhere, growth of
  `resource`'s ru_maxrss (a lower bound).
Both are process-wide: `measure` blocks do not nest, and other threads' allocations count too.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_bytes: int = 0  # highest memory in use during the block
    peak_delta_bytes: int = 0  # peak_bytes minus what was in use when the block started
    memory_kind: str = ""  # "cuda-allocated", "cpu-peak-rss" or "cpu-maxrss-growth"


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "5": reset the peak RSS (VmHWM) to the current RSS; Linux >= 4.0
        return True
    except OSError:
        return False


@contextmanager
def measure(device: str | torch.device = "cpu") -> Iterator[Measurement]:
    """Measure wall seconds and peak memory of the `with` block; the Measurement is filled in on exit."""
    m = Measurement()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start_bytes = torch.cuda.memory_allocated(device)
        m.memory_kind = "cuda-allocated"
    elif _reset_peak_rss():
        start_bytes = _proc_status_kb("VmRSS") * 1024
        m.memory_kind = "cpu-peak-rss"
    else:
        start_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
        m.memory_kind = "cpu-maxrss-growth"
    start = time.perf_counter()
    try:
        yield m
    finally:
        if cuda:
            torch.cuda.synchronize(device)
        m.seconds = time.perf_counter() - start
        if cuda:
            m.peak_bytes = torch.cuda.max_memory_allocated(device)
        elif m.memory_kind == "cpu-peak-rss":
            m.peak_bytes = _proc_status_kb("VmHWM") * 1024
        else:
            m.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        m.peak_delta_bytes = max(0, m.peak_bytes - start_bytes)


class BlockCounter:
    """Counts forward calls of each module in a list (e.g. `model.blocks`) through forward hooks.

    It counts calls of the module: a cache that skips a block by not calling it is counted right,
    one that intercepts inside the block's forward must count its own reuses.
    """

    def __init__(self, blocks: Sequence[nn.Module]):
        self.blocks = list(blocks)
        self.counts = [0] * len(self.blocks)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def total(self) -> int:
        """Block evaluations summed over all blocks."""
        return sum(self.counts)

    def attach(self) -> BlockCounter:
        """Register the hooks (idempotent)."""
        if not self._handles:
            self._handles = [b.register_forward_hook(self._hook(i)) for i, b in enumerate(self.blocks)]
        return self

    def remove(self) -> None:
        """Remove the hooks; the counts are kept."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def reset(self) -> None:
        """Zero the counts."""
        self.counts = [0] * len(self.blocks)

    def _hook(self, i: int):
        def hook(module, args, output):
            self.counts[i] += 1

        return hook

    def __enter__(self) -> BlockCounter:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()


class LeafCounter:
    """Forward hooks on the layers in `units` that add each call's cost to `work`; a `with` block counts."""

    def __init__(self, units: list[nn.Module]):
        self.units = units
        self.work = 0  # what a benchmark divides by the same count of a full-compute run
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def cost(self, module: nn.Module, args, output) -> int:
        raise NotImplementedError

    def _hook(self, module, args, output) -> None:
        self.work += self.cost(module, args, output)

    def __enter__(self):
        self._handles = [u.register_forward_hook(self._hook) for u in self.units]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class ComputeCounter(LeafCounter):
    """Counts the work a transformer's blocks really did, in batch rows, whoever skipped it.

    Caches that intercept inside a block (diffusers' TaylorSeer, PAB and FasterCache replace an attention
    module's forward; its forward hooks still fire) defeat `BlockCounter`. This counter hooks the first
    linear layer of each block's attention (`attn.to_q`) and of its MLP (`ff` / `proj_mlp`), which only run
    when that part is computed, and adds the tokens of each call (batch rows x tokens), so skipped rows
    (per-sample decisions, a skipped CFG branch) and skipped tokens (token-level caches) both show. The text
    stream of dual-stream blocks (Flux / SD3: `attn.add_q_proj`, `ff_context`) is counted too: token-level
    caches run every text token on their partial steps, work that the image tokens alone would hide. A token
    through a block's attention and one through its MLP weigh the same. Divide by the same count of a
    full-compute run to get the fraction.
    """

    def __init__(self, blocks: Sequence[nn.Module]):
        units: list[nn.Module] = []
        for i, block in enumerate(blocks):
            attn = getattr(getattr(block, "attn", None), "to_q", None)
            mlp = getattr(block, "proj_mlp", None) or _first_linear(getattr(block, "ff", None))
            if not isinstance(attn, nn.Linear) or not isinstance(mlp, nn.Linear):
                raise ValueError(
                    f"block {i} ({type(block).__name__}) has no attn.to_q and ff / proj_mlp linear layers to count"
                )
            text = [getattr(block.attn, "add_q_proj", None), _first_linear(getattr(block, "ff_context", None))]
            units += [attn, mlp, *(u for u in text if isinstance(u, nn.Linear))]
        super().__init__(units)

    @property
    def tokens(self) -> int:
        return self.work

    def cost(self, module, args, output) -> int:
        return args[0].shape[:-1].numel()


def _first_linear(module: nn.Module | None) -> nn.Linear | None:
    return next((m for m in module.modules() if isinstance(m, nn.Linear)), None) if module is not None else None


class MacCounter(LeafCounter):
    """Counts the multiply-accumulates a module's convolutions and linear layers really did, whoever skipped them.

    For a UNet, whose blocks differ in cost by orders of magnitude (a full-resolution level against an 8x8 one),
    counting blocks or tokens says little; the MACs of every Conv2d / Linear that ran do (each hooked leaf runs
    only when its block is computed: a block whose stored output is reused runs none of its layers). Attention's
    own two matmuls are left out (a few percent at these sizes). Divide by a full-compute run's count.
    """

    def __init__(self, module: nn.Module):
        units = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if not units:
            raise ValueError(f"{type(module).__name__} has no Conv2d or Linear layer to count")
        super().__init__(units)

    @property
    def macs(self) -> int:
        return self.work

    def cost(self, module, args, output) -> int:
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        return output.numel() * per_output


class StackTimer:
    """Wall time spent inside a block stack: from the start of its first module to the end of its last, per
    model call, summed (a `with` block times). Meant for full-compute runs, where every call runs the whole
    stack in order; a cache that skips the first or last module would leave calls out.

    What it is for: a step's work outside the stack (embeddings, the final layer, the sampler update, CFG)
    is done by every cache policy on every step, so the speedup a policy can promise is
    1 / ((1 - s) + s * f) for a stack share s of the full run's time and a computed fraction f of the stack's
    work (Amdahl), not 1 / f. On CUDA each edge synchronises the device, which costs a little time."""

    def __init__(self, first: nn.Module, last: nn.Module, device: str | torch.device = "cpu"):
        self.first, self.last, self.device = first, last, torch.device(device)
        self.seconds = 0.0
        self._start: float | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _enter(self, module, args) -> None:
        self._start = self._now()

    def _exit(self, module, args, output) -> None:
        if self._start is not None:
            self.seconds += self._now() - self._start
            self._start = None

    def __enter__(self) -> StackTimer:
        self._handles = [self.first.register_forward_pre_hook(self._enter), self.last.register_forward_hook(self._exit)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
