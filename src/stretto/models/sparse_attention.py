"""SparseD (Wang et al. 2025, "SparseD: Sparse Attention for Diffusion Language Models"): head-specific sparse
attention, selected once from full attention and reused for the later decoding steps.

The paper's three observations: attention patterns differ between heads, stay alike across denoising steps, and
the early steps matter most. So the first `dense` decoding steps attend fully; at the last of them the full
attention of every layer and head is also written out (an explicit softmax beside the usual SDPA), and for each
query block of `qblock` slots the keys holding the most attention mass are kept: the top `keep` fraction of the
prompt's keys and, separately, of the answer's keys (the paper's isolated selection, so that the still-masked
answer is not crowded out by the prompt). Every later step attends only to the kept keys.

Where this departs from the paper:
- Keys are kept one by one, not in key blocks: a GPU block-sparse kernel needs blocks, a mask does not.
- It is a boolean mask over torch's `scaled_dot_product_attention`, which still computes every query-key product:
  on the CPU it saves no time (the speed is the dense speed, minus building the mask). What SparseD would save
  is counted instead: `fraction`, the share of the allowed query-key pairs actually attended over a generation.
- Semi-autoregressive block decoding: `per_block` selects again in every block, after its own `dense` steps (the
  paper selects once per generation, the default here). With a prefix or dual cache only a block's first step
  runs every query, so a pattern selected at a later, cheap step covers the block's queries alone (the others
  stay dense): dense=1 selects from a full pass.
- A query whose kept keys all fall outside its own mask (a left-padded slot, a block-causal edge) keeps its
  dense row, so no query is left with nothing to attend to.
`SparseD` is the validated config (spec "sparsed:keep=0.3,dense=1"); `SparsePattern` is one generation's state,
passed to the model call as `sparse=` and read by the attention of every layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from stretto import spec
from stretto.spec import bounded


@dataclass
class SparseD:
    """SparseD's settings; `parse_sparse("sparsed:keep=0.3")` builds one."""

    keep: float = bounded(0.3, 0.0, 1.0, "share of each query block's keys kept (prompt and answer apart); > 0")
    dense: int = bounded(1, 1, 10_000, "decoding steps with full attention; the pattern is selected at the last")
    qblock: int = bounded(8, 1, 4096, "query slots that share one selection")
    per_block: bool = bounded(False, 0, 1, "select again in every block (the paper selects once per generation)")
    name: ClassVar[str] = "sparsed"

    def __post_init__(self) -> None:
        number = isinstance(self.keep, int | float) and not isinstance(self.keep, bool)
        if not (number and 0 < self.keep <= 1):  # keep=0 would leave a query nothing to attend to
            raise ValueError(f"SparseD.keep must be a number in (0, 1], got {self.keep!r}")
        spec.check_ranges(self)

    def __str__(self) -> str:
        """The canonical spec string: keep, then the options that differ from their default."""
        opts = [f"keep={spec.format_value(self.keep)}"]
        for f in spec.options(self)[1:]:
            value = getattr(self, f.name)
            if value != f.default:
                opts.append(f.name if value is True else f"{f.name}={spec.format_value(value)}")
        return f"{self.name}:" + ",".join(opts)


def parse_sparse(text: str | None) -> SparseD | None:
    """'none' (or None) -> None (dense attention); 'sparsed:keep=0.3,dense=1,qblock=8,per_block' -> a SparseD."""
    name, _ = spec.split("none" if text is None else text)
    if name == "none":
        return None
    if name != SparseD.name:
        raise ValueError(f"unknown sparse attention {name!r}; allowed: none, {SparseD.name}")
    return spec.parse(text, {SparseD.name: SparseD}, "sparse attention")


class SparsePattern:
    """One generation's SparseD state: the phase of the current step, the kept keys per layer, attended pairs.

    width: slots of the canvas; gen_start: the first answer slot (the split of the isolated selection).
    The decode loop calls `start_block` and `start_step`; the attention of each layer calls `restrict` (the mask
    this call attends with) and `select` (records the pattern at the selection step).
    """

    def __init__(self, config: SparseD, width: int, gen_start: int):
        self.config, self.width, self.gen_start = config, width, gen_start
        self.kept: dict[int, torch.Tensor] = {}  # layer -> (B, H, width, width) bool; a query's row True: dense
        self.steps, self.phase = 0, "dense"
        self.attended = self.allowed = 0  # query-key pairs, summed over calls, layers and heads

    def start_block(self) -> None:
        if self.config.per_block:
            self.kept.clear()
            self.steps = 0

    def start_step(self) -> None:
        last = self.config.dense - 1
        self.phase = "dense" if self.steps < last else "select" if self.steps == last else "sparse"
        self.steps += 1

    @property
    def fraction(self) -> float:
        """Share of the allowed query-key pairs attended so far (1: all dense)."""
        return self.attended / self.allowed if self.allowed else 1.0

    def restrict(
        self, layer: int, mask: torch.Tensor, q: torch.Tensor, q_slots: torch.Tensor, k_slots: torch.Tensor
    ) -> torch.Tensor:
        """The mask this call attends with: `mask` itself (untouched) until the pattern exists, then mask & kept."""
        b, h, tq = q.shape[:3]
        full = mask.expand(b, 1, tq, k_slots.shape[0])
        n_allowed = int(full.sum()) * h
        self.allowed += n_allowed
        if self.phase != "sparse" or layer not in self.kept:
            self.attended += n_allowed
            return mask
        kept = full & self.kept[layer][:, :, q_slots[:, None], k_slots[None, :]]
        kept = kept | (full & ~kept.any(-1, keepdim=True))  # never leave a query without a key
        self.attended += int(kept.sum())
        return kept

    def select(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        mask: torch.Tensor,
        q_slots: torch.Tensor,
        k_slots: torch.Tensor,
        scale: float | None = None,
    ) -> None:
        """At the selection step: keep, per head and query block, the keys with the most attention mass.

        q (B, H, Tq, D) and k (B, H, Tk, D) rotated, as attended; mask (B, 1, Tq or 1, Tk) bool.
        """
        if self.phase != "select":
            return
        b, h, tq, tk = *q.shape[:3], k.shape[2]
        full = mask.expand(b, 1, tq, tk)
        att = (q @ k.transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
        att = att.masked_fill(~full, float("-inf")).softmax(-1).nan_to_num(0.0)  # a query with no key: no mass
        groups, inv = torch.unique(q_slots // self.config.qblock, return_inverse=True)
        mass = att.new_zeros(b, h, len(groups), tk).index_add_(2, inv, att)
        reach = full.new_zeros(b, 1, len(groups), tk, dtype=torch.float).index_add_(2, inv, full.float()) > 0
        kept = torch.zeros(b, h, len(groups), tk, dtype=torch.bool, device=q.device)
        in_prompt = k_slots < self.gen_start
        for part in (in_prompt, ~in_prompt):  # isolated selection: the prompt's keys and the answer's apart
            ok = reach & part
            n = ok.sum(-1, keepdim=True)
            quota = torch.where(n > 0, torch.ceil(n * self.config.keep - 1e-6).clamp(min=1), 0)
            order = mass.masked_fill(~ok, float("-inf")).argsort(dim=-1, descending=True, stable=True)
            rank = torch.empty_like(order).scatter_(-1, order, torch.arange(tk, device=q.device).expand_as(order))
            kept |= (rank < quota) & ok
        rows = self.kept.setdefault(layer, torch.ones(b, h, self.width, self.width, dtype=torch.bool, device=q.device))
        rows[:, :, q_slots[:, None], k_slots[None, :]] = kept[:, :, inv]
