"""The one hook mechanism of feature caching: it takes over a transformer's block stack and lets a policy run it.

How it attaches. The model's block lists (diffusers Flux: `transformer_blocks` then
`single_transformer_blocks`; SD3 / DiT: `transformer_blocks`; Wan: `blocks`) are swapped for
`_CachedBlockList`s holding the same block modules (so parameters, `state_dict` keys, `.to()`,
indexing and forward hooks on the blocks are unchanged). While the model that owns the lists runs its
forward, iterating the first list yields one `_StackRunner` and the other lists yield nothing: the
model's own `for block in self.transformer_blocks` loop then makes exactly one call, and the runner hands
the whole stack to the policy. Blocks the policy skips are never called (no Python call per skipped
block); blocks it computes are called as modules, so `BlockCounter`'s hooks count real evaluations.
Outside the owner's forward the lists iterate normally.

What a policy sees. `Stack` runs a range of blocks on all or some batch rows (and, for token-level
policies, on a subset of the image tokens: `compute_tokens`); `Call` carries the step's
sigma per row (set explicitly with `step(...)`, else taken from the model call's `timestep` argument),
its step index (by sigma from the schedule given to `reset`, else as the caller said, else counted per
branch), whether it is the final step, and the policy's state for these rows. State is kept per branch
("cond", "uncond", ...): a batched CFG call is split into equal row chunks, one per branch, and each
chunk's state is stored under its branch name, so running the branches batched or as separate calls
gives the same decisions. Decisions are per row (a policy returns a boolean per row; rows that compute
are gathered into a smaller batch, the others reuse or forecast).

On a diffusers model, a pipeline's `cache_context("cond")` / `("uncond")` names the branch of each call
(and its step_index / sigma when given), and the `_reset_stateful_cache()` a pipeline runs at its end
resets the state, so `apply(pipe, policy)` works without touching the pipeline.

Not supported yet: ControlNet residuals and SD3 `skip_layers` (the model adds them inside the loop that
the runner replaces); tensors in `joint_attention_kwargs` are not split by row.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Hidden = tuple[torch.Tensor | None, ...]  # the tensors a block passes to the next, in the block's output order

# (owner attribute names of the block lists, in execution order), tried in this order
KNOWN_STACKS: tuple[tuple[str, ...], ...] = (
    ("transformer_blocks", "single_transformer_blocks"),  # diffusers Flux (and Flux-like)
    ("transformer_blocks",),  # diffusers SD3, DiT, PixArt
    ("blocks",),  # diffusers Wan, stretto's own models
    ("layers",),
)
# where the model holding the lists may sit inside the object passed to apply()
OWNER_PATHS: tuple[str, ...] = ("", "transformer", "model")
# block arguments that are shared by all batch rows even when their first dimension happens to equal the batch
SHARED_ARGS = frozenset({"image_rotary_emb", "rotary_emb", "joint_attention_kwargs", "cross_attention_kwargs"})
DUAL_STREAM = ("encoder_hidden_states", "hidden_states")  # Flux / SD3 blocks return (encoder, image) tokens
# block arguments with one entry per token (text tokens, then image tokens) that compute_tokens slices
TOKEN_ARGS = frozenset({"image_rotary_emb"})
# per-token block arguments in layouts compute_tokens cannot slice (Wan's rotary table, self-attention masks)
UNSLICEABLE_ARGS = frozenset({"rotary_emb", "attention_mask"})


# ---------------------------------------------------------------- Hidden-tuple arithmetic (None passes through)
def take(h: Hidden, rows: torch.Tensor) -> Hidden:
    """The given batch rows of every tensor."""
    return tuple(None if t is None else t.index_select(0, rows) for t in h)


def put(h: Hidden, rows: torch.Tensor, values: Hidden) -> Hidden:
    """A copy of `h` with the given batch rows replaced by `values`."""
    return tuple(None if t is None else t.index_copy(0, rows, v) for t, v in zip(h, values, strict=True))


def add(a: Hidden, b: Hidden) -> Hidden:
    return tuple(None if x is None or y is None else x + y for x, y in zip(a, b, strict=True))


def sub(a: Hidden, b: Hidden) -> Hidden:
    return tuple(None if x is None or y is None else x - y for x, y in zip(a, b, strict=True))


def per_row(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) tensor to broadcast over the rows of `like`."""
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def _rows_of(value: Any, start: int, stop: int) -> Any:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value[start:stop]
    return tuple(_rows_of(v, start, stop) for v in value)


def _zeros_like(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return torch.zeros_like(value)
    return tuple(_zeros_like(v) for v in value)


def _cat_rows(values: list[Any]) -> Any:
    if any(v is None for v in values):
        return None
    if all(isinstance(v, torch.Tensor) for v in values):
        return torch.cat(values)
    if len({len(v) for v in values}) != 1:
        return None
    return tuple(_cat_rows(list(parts)) for parts in zip(*values, strict=True))


# ---------------------------------------------------------------- step context and accounting
@dataclass
class StepContext:
    """What the caller says about one model call: the noise level and which row chunk is which CFG branch."""

    sigma: float | torch.Tensor | None  # None: take the `timestep` argument of the model call
    branches: tuple[str, ...] = ("cond",)
    index: int | None = None  # the step's index, when the caller knows it and gave reset() no schedule
    final: bool | None = None  # whether it is the last step (same condition)


@dataclass
class StepRecord:
    """Block evaluations of one model call for one branch (averaged over the branch's rows)."""

    call: int
    branch: str
    sigma: float
    computed: float
    reused: float
    forecast: float


@dataclass
class CacheSummary:
    """Per-call, per-branch counts of computed / reused / forecast block evaluations."""

    policy: str
    num_blocks: int
    records: list[StepRecord] = field(default_factory=list)

    def totals(self) -> dict[str, float]:
        return {k: sum(getattr(r, k) for r in self.records) for k in ("computed", "reused", "forecast")}

    @property
    def compute_fraction(self) -> float:
        """Computed block evaluations over all block evaluations the model would have made."""
        t = self.totals()
        whole = sum(t.values())
        return t["computed"] / whole if whole else 1.0

    def __str__(self) -> str:
        lines = [f"cache {self.policy}: {self.num_blocks} blocks", "call branch    sigma  computed reused forecast"]
        for r in self.records:
            lines.append(
                f"{r.call:4d} {r.branch:8s} {r.sigma:6.3f} {r.computed:8.2f} {r.reused:6.2f} {r.forecast:8.2f}"
            )
        t = self.totals()
        lines.append(
            f"total: computed {t['computed']:g}, reused {t['reused']:g}, forecast {t['forecast']:g} "
            f"({self.compute_fraction:.1%} computed)"
        )
        return "\n".join(lines)


KINDS = ("computed", "reused", "forecast")


# ---------------------------------------------------------------- what a policy works with
class Stack:
    """The block stack for one model call: runs ranges of blocks on all or some rows, and counts."""

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        carried: tuple[str, ...],
        extras: dict,
        batch: int,
        counts,
        fresh,
        model: str = "",
    ):
        self.blocks = blocks
        self.num_blocks = len(blocks)
        self.carried = carried
        self.extras = extras
        self.batch = batch
        self._counts = counts  # (batch, 3) tensor: block evaluations per row and kind
        self.fresh = fresh  # (batch,) bool: rows without stored state, which must compute
        self.model = model or type(blocks[0]).__name__  # for error messages

    def compute(self, h: Hidden, start: int, stop: int, rows: torch.Tensor | None = None) -> Hidden:
        """Run blocks [start, stop) on `h`; with `rows`, `h` holds just those batch rows."""
        h = self._run_blocks(h, start, stop, self._row_extras(rows))
        self.count("computed", start, stop, rows)
        return h

    def compute_tokens(
        self,
        h: Hidden,
        start: int,
        stop: int,
        tokens: torch.Tensor,
        rows: torch.Tensor | None = None,
        kv: list | None = None,
    ) -> Hidden:
        """Run blocks [start, stop) on the image tokens `tokens` of `h` only; return the blocks' output, whose
        image-token tensor holds just those tokens (in the order of `tokens`). With `rows`, `h` holds those rows.

        `tokens` are distinct indices into the image tokens (dim 1 of `hidden_states`). The text tokens of
        dual-stream blocks (Flux, SD3) always go along, and per-token block arguments (Flux's
        `image_rotary_emb`, one row per text then image token) are sliced to match. One subset serves all rows
        of the call, because diffusers' rotary tables are shared across the batch. It counts as a fractional
        evaluation: k of N image tokens over n blocks are n*k/N computed and n*(N-k)/N reused (the attention
        itself, which then covers all keys, is not discounted). With every token selected this is `compute`
        (the same output, bit for bit).

        Without `kv` the selected tokens attend only to each other and the text tokens. With `kv` (a list,
        one tensor per self-attention module of blocks [start, stop), for the rows `h` holds) they attend to
        the keys and values of all tokens (see stretto.cache.token_attention): with every token selected the
        blocks' image keys and values are recorded into `kv`; otherwise the selected tokens' fresh keys and
        values overwrite their slots in `kv` (which is updated in place) and the others come from it."""
        image = self.carried.index("hidden_states") if "hidden_states" in self.carried else 0
        if h[image].ndim != 3:
            raise ValueError(
                f"token-level cache policies need (batch, tokens, channels) hidden states like Flux/SD3/DiT-style "
                f"blocks; {self.model} passes {tuple(h[image].shape)}"
            )
        n_image, k = h[image].shape[1], tokens.numel()
        text = h[0].shape[1] if self.carried == DUAL_STREAM and h[0] is not None else 0
        if k == 0 or k > n_image:
            raise ValueError(f"compute_tokens needs 1 to {n_image} distinct image tokens, got {k}")
        keep = torch.cat([torch.arange(text, device=tokens.device), text + tokens])  # rows of per-token tables
        extras = {name: self._token_arg(name, value, keep, text + n_image) for name, value in self.extras.items()}
        if k == n_image:
            if kv is None:
                return self.compute(h, start, stop, rows)
            with self._attend_all(kv, start, stop, None, text):
                return self.compute(h, start, stop, rows)
        if rows is not None and rows.numel() != self.batch:
            extras = {name: self._take_arg(name, value, rows) for name, value in extras.items()}
        h = tuple(t.index_select(1, tokens) if i == image else t for i, t in enumerate(h))
        if kv is None:
            h = self._run_blocks(h, start, stop, extras)
        else:
            with self._attend_all(kv, start, stop, tokens, text):
                h = self._run_blocks(h, start, stop, extras)
        self.count("computed", start, stop, rows, fraction=k / n_image)
        self.count("reused", start, stop, rows, fraction=1 - k / n_image)
        return h

    def _attend_all(self, kv: list, start: int, stop: int, tokens: torch.Tensor | None, text: int):
        from stretto.cache.token_attention import all_token_attention  # imports diffusers' attention code

        return all_token_attention(self.blocks[start:stop], kv, tokens, text, self.model)

    def _row_extras(self, rows: torch.Tensor | None) -> dict:
        if rows is None or rows.numel() == self.batch:
            return self.extras
        return {k: self._take_arg(k, v, rows) for k, v in self.extras.items()}

    def _token_arg(self, name: str, value: Any, keep: torch.Tensor, n_tokens: int) -> Any:
        """A block argument restricted to the kept tokens (`keep` indexes text then image tokens)."""
        if value is None:
            return None
        if name in UNSLICEABLE_ARGS or (name not in TOKEN_ARGS and "rotary" in name):
            raise ValueError(
                f"token-level cache policies support Flux/SD3/DiT-style blocks; {self.model} passes the per-token "
                f"block argument {name!r}, which they cannot restrict to a subset of image tokens"
            )
        if name not in TOKEN_ARGS:
            return value
        tables = value if isinstance(value, (tuple, list)) else (value,)
        if not all(isinstance(t, torch.Tensor) and t.ndim >= 1 and t.shape[0] == n_tokens for t in tables):
            shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in tables]
            raise ValueError(
                f"token-level cache policies expect {name} as tables with one row per token ({n_tokens} text + "
                f"image tokens) like diffusers Flux; {self.model} passed {shapes}"
            )
        sliced = tuple(t.index_select(0, keep.to(t.device)) for t in tables)
        return sliced if isinstance(value, (tuple, list)) else sliced[0]

    def _run_blocks(self, h: Hidden, start: int, stop: int, extras: dict) -> Hidden:
        for block in self.blocks[start:stop]:
            out = block(**extras, **dict(zip(self.carried, h, strict=True)))
            h = out if isinstance(out, tuple) else (out,)
            if len(h) != len(self.carried):
                raise RuntimeError(
                    f"{type(block).__name__} returned {len(h)} tensors but the cache expected {self.carried}; "
                    "this block type is not supported yet"
                )
        return h

    def count(self, kind: str, start: int, stop: int, rows: torch.Tensor | None = None, fraction: float = 1.0) -> None:
        """Record that blocks [start, stop) were computed / reused / forecast for the rows (all if None);
        `fraction` counts a part of each block evaluation (e.g. the share of tokens computed)."""
        n = float(max(0, stop - start)) * fraction
        if rows is None:
            self._counts[:, KINDS.index(kind)] += n
        else:
            self._counts[rows, KINDS.index(kind)] += n

    def compute_or_reuse(
        self, h: Hidden, start: int, stop: int, compute: torch.Tensor, state: dict, key: str
    ) -> Hidden:
        """Rows where `compute` is true run blocks [start, stop) and store their residual under `state[key]`;
        the other rows add the stored residual instead. Computed rows get the blocks' exact output."""
        if state.get(key) is None:
            compute = torch.ones_like(compute)
        compute = compute | self.fresh
        run, skip = split(compute)
        if skip is None:
            out = self.compute(h, start, stop)
            state[key] = sub(out, h)
            return out
        if run is None:
            self.count("reused", start, stop)
            return add(h, state[key])
        h_run = take(h, run)
        out_run = self.compute(h_run, start, stop, rows=run)
        self.count("reused", start, stop, skip)
        state[key] = put(state[key], run, sub(out_run, h_run))
        return put(add(h, state[key]), run, out_run)

    def main(self, h: Hidden) -> torch.Tensor:
        """The image-token tensor of `h` (what residual-change signals are measured on)."""
        return h[self.carried.index("hidden_states")] if "hidden_states" in self.carried else h[0]

    def _take_arg(self, name: str, value: Any, rows: torch.Tensor) -> Any:
        if name in SHARED_ARGS or not isinstance(value, torch.Tensor) or value.ndim == 0:
            return value
        return value.index_select(0, rows) if value.shape[0] == self.batch else value


def split(mask: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Row indices where `mask` is true and where it is false (None when there are none). Syncs with the device."""
    run = mask.nonzero().flatten()
    if run.numel() == mask.numel():
        return run, None
    if run.numel() == 0:
        return None, (~mask).nonzero().flatten()
    return run, (~mask).nonzero().flatten()


@dataclass
class Call:
    """One model call as a policy sees it; `state` is the policy's per-row state for these rows (mutable)."""

    sigma: torch.Tensor  # (B,) noise level of each row
    index: torch.Tensor  # (B,) step index of each row (see CacheHandle._step_index)
    final: torch.Tensor  # (B,) bool: the final step (all False when neither a schedule nor the caller says)
    fresh: torch.Tensor  # (B,) bool: rows with no stored state yet (their entries in `state` are zeros)
    state: dict[str, Any]


# ---------------------------------------------------------------- the hook
class _StackRunner:
    """What iterating the first block list yields during the owner's forward: one call runs the whole stack."""

    def __init__(self, handle: CacheHandle):
        self.handle = handle

    def __call__(self, *args, **kwargs):
        return self.handle._run(args, kwargs)


class _CachedBlockList(nn.ModuleList):
    """A ModuleList of the same blocks whose iteration, during the owner's forward, is the cache's runner."""

    _stretto_handle: CacheHandle
    _stretto_first: bool

    def __iter__(self) -> Iterator[nn.Module]:
        handle = self.__dict__.get("_stretto_handle")
        if handle is not None and handle.active:
            return iter([handle.runner] if self._stretto_first else [])
        return iter(self._modules.values())


def _find_stack(model: nn.Module, blocks) -> list[tuple[nn.Module, str]]:
    """(owner module, attribute name) of each block list, in execution order."""
    if blocks is not None:
        lists = [blocks] if isinstance(blocks, (nn.ModuleList, str)) else list(blocks)
        found = []
        for item in lists:
            if isinstance(item, str):
                owner_path, _, name = item.rpartition(".")
                owner = model.get_submodule(owner_path) if owner_path else model
                item = getattr(owner, name, None)
            if not isinstance(item, nn.ModuleList) or len(item) == 0:
                raise ValueError(f"blocks must be non-empty nn.ModuleLists of the model (or their names), got {item!r}")
            owner, name = next(
                ((m, n) for m in model.modules() for n, c in m._modules.items() if c is item), (None, None)
            )
            if owner is None:
                raise ValueError("blocks must be block lists that belong to the model")
            found.append((owner, name))
        return found
    for path in OWNER_PATHS:
        owner = getattr(model, path, None) if path else model
        if not isinstance(owner, nn.Module):
            continue
        for names in KNOWN_STACKS:
            lists = [getattr(owner, n, None) for n in names]
            if all(isinstance(x, nn.ModuleList) for x in lists) and len(lists[0]) > 0:
                return [(owner, n) for n in names if len(getattr(owner, n)) > 0]
    tried = ", ".join(f"{p + '.' if p else ''}{'+'.join(n)}" for p in OWNER_PATHS for n in KNOWN_STACKS)
    raise ValueError(
        f"could not find the block stack of {type(model).__name__}: tried the attributes {tried}. "
        "Pass the block lists explicitly, in execution order, e.g. "
        "apply(model, policy, blocks=[model.transformer_blocks, model.single_transformer_blocks]) "
        "or blocks=['transformer_blocks'] (attribute names, dotted paths allowed)"
    )


class CacheHandle:
    """The cache attached to one model: the policy, the swapped block lists, per-branch state and the records."""

    def __init__(self, model: nn.Module, policy, blocks=None):
        self.model = model
        self.policy = policy
        self.lists = _find_stack(model, blocks)
        owners = {id(o) for o, _ in self.lists}
        if len(owners) != 1:
            raise ValueError("all block lists must belong to the same module (the one whose forward runs them)")
        for owner, name in self.lists:
            if isinstance(getattr(owner, name), _CachedBlockList):
                raise RuntimeError(
                    f"a cache is already applied to {type(owner).__name__}.{name}; call stretto.cache.remove() first"
                )
        self.owner = self.lists[0][0]
        self.originals = [getattr(o, n) for o, n in self.lists]
        self.blocks = [b for lst in self.originals for b in lst]
        policy.check_stack(len(self.blocks))
        self.signature = inspect.signature(self.blocks[0].forward)
        params = list(self.signature.parameters)
        returns = str(self.signature.return_annotation).lower()
        dual = all(p in params for p in DUAL_STREAM) and returns.startswith(("tuple", "typing.tuple"))
        self.carried = DUAL_STREAM if dual else (params[0],)  # what a block hands to the next, in output order
        self.runner = _StackRunner(self)
        self.active = False
        self.context: StepContext | None = None
        self._timestep = None
        self.reset()

    # -- attach / detach
    def attach(self) -> None:
        for i, ((owner, name), original) in enumerate(zip(self.lists, self.originals, strict=True)):
            swapped = _CachedBlockList(list(original))
            swapped.__dict__["_stretto_handle"] = self
            swapped.__dict__["_stretto_first"] = i == 0
            setattr(owner, name, swapped)
        self._hooks = [
            self.owner.register_forward_pre_hook(self._enter, with_kwargs=True),
            self.owner.register_forward_hook(self._leave, always_call=True),
        ]
        self._bridge_diffusers()

    def _bridge_diffusers(self) -> None:
        """On a diffusers model, its pipeline's `cache_context("cond" / "uncond")` names the branch of each call
        and `_reset_stateful_cache()` (run when a pipeline call ends) resets the state."""
        owner = self.owner
        context, reset = getattr(owner, "cache_context", None), getattr(owner, "_reset_stateful_cache", None)
        self._bridged = []
        if callable(context):

            @contextmanager
            def cache_context(name: str, **kwargs):
                step_index, total = kwargs.get("step_index"), kwargs.get("num_inference_steps")
                final = None if step_index is None or not total else step_index == total - 1
                ctx = StepContext(kwargs.get("sigma"), (name,), step_index, final)
                previous, self.context = self.context, ctx
                try:
                    with context(name, **kwargs):
                        yield
                finally:
                    self.context = previous

            owner.__dict__["cache_context"] = cache_context
            self._bridged.append("cache_context")
        if callable(reset):

            def reset_stateful_cache(*args, **kwargs):
                self.reset()
                return reset(*args, **kwargs)

            owner.__dict__["_reset_stateful_cache"] = reset_stateful_cache
            self._bridged.append("_reset_stateful_cache")

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        for name in self._bridged:
            del self.owner.__dict__[name]
        for (owner, name), original in zip(self.lists, self.originals, strict=True):
            setattr(owner, name, original)

    def _enter(self, module, args, kwargs):
        self.active = True
        self._timestep = kwargs.get("timestep")

    def _leave(self, module, args, output):
        self.active = False

    # -- state
    def reset(self, sigmas: torch.Tensor | Sequence[float] | None = None) -> None:
        """Forget all cached state and records. `sigmas`, the generation's schedule, keys step indices on sigma."""
        self.states: dict[tuple[str, ...], tuple[int, dict]] = {}  # branch group -> (rows per branch, state)
        self.steps: dict[str, int] = {}
        self.calls = 0
        self.records: list[StepRecord] = []
        self._pending: list[tuple[int, tuple[str, ...], torch.Tensor, torch.Tensor]] = []
        self.schedule = None
        if sigmas is not None:
            s = torch.as_tensor(sigmas, dtype=torch.float32).flatten()
            self.schedule = s[s > 0].sort(descending=True).values
        self.policy.reset()

    def _gather_state(self, branches: tuple[str, ...], chunk: int) -> tuple[dict, list[bool]]:
        """The state of these rows, and per branch whether it has none yet (its rows are zero-filled)."""
        if branches in self.states and self.states[branches][0] == chunk:
            return self.states[branches][1], [False] * len(branches)
        pieces = []
        for b in branches:
            group = next((g for g in self.states if b in g), None)
            if group is None or self.states[group][0] != chunk:  # never seen, or its batch size changed
                pieces.append(None)
                continue
            i, old = group.index(b), self.states[group][1]
            pieces.append({k: _rows_of(v, i * chunk, (i + 1) * chunk) for k, v in old.items()})
        present = [p for p in pieces if p]
        if not present:
            return {}, [True] * len(branches)
        keys = set.intersection(*(set(p) for p in present))
        fresh = [p is None or not keys <= set(p) for p in pieces]
        template = present[0]
        filled = [{k: _zeros_like(template[k]) for k in keys} if f else p for p, f in zip(pieces, fresh, strict=True)]
        merged = {k: _cat_rows([p[k] for p in filled]) for k in keys}
        return {k: v for k, v in merged.items() if v is not None}, fresh

    def _store_state(self, branches: tuple[str, ...], state: dict, chunk: int) -> None:
        for group in [g for g in self.states if set(g) & set(branches)]:
            n, old = self.states.pop(group)
            kept = tuple(b for b in group if b not in branches)
            if kept:
                idx = [group.index(b) for b in kept]
                self.states[kept] = (
                    n,
                    {k: _cat_rows([_rows_of(v, i * n, (i + 1) * n) for i in idx]) for k, v in old.items()},
                )
        self.states[branches] = (chunk, state)

    # -- one model call
    def _run(self, args, kwargs):
        bound = self.signature.bind(*args, **kwargs).arguments
        h = tuple(bound.get(n) for n in self.carried)
        extras = {}
        for name, value in bound.items():
            kind = self.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                extras.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    raise TypeError(f"the cache cannot pass extra positional block arguments (*{name})")
            elif name not in self.carried:
                extras[name] = value
        batch = h[-1].shape[0]
        device = h[-1].device
        ctx = self.context or StepContext(sigma=None, branches=("cond",))
        branches = tuple(ctx.branches)
        if batch % len(branches):
            raise ValueError(f"batch of {batch} rows cannot be split into the branches {branches}")
        chunk = batch // len(branches)
        sigma = self._timestep if ctx.sigma is None else ctx.sigma
        if sigma is None:
            raise ValueError(
                "the cache needs the step's sigma: wrap the model call in "
                "`with stretto.cache.step(model, sigma=..., branches=...)` or pass `timestep` to the model"
            )
        sigma = torch.as_tensor(sigma, dtype=torch.float32).to(device).flatten()
        sigma = sigma.expand(batch) if sigma.numel() == 1 else sigma
        if sigma.numel() != batch:
            raise ValueError(f"sigma has {sigma.numel()} values for a batch of {batch} rows; give 1 or {batch}")
        index, final = self._step_index(sigma, ctx, branches, chunk)
        state, fresh = self._gather_state(branches, chunk)
        fresh = torch.tensor(fresh, device=device).repeat_interleave(chunk)
        counts = torch.zeros(batch, len(KINDS), device=device)
        stack = Stack(self.blocks, self.carried, extras, batch, counts, fresh, type(self.owner).__name__)
        out = self.policy.run(stack, h, Call(sigma=sigma, index=index, final=final, fresh=fresh, state=state))
        self._store_state(branches, state, chunk)
        for b in branches:
            self.steps[b] = self.steps.get(b, 0) + 1
        self._pending.append((self.calls, branches, sigma.reshape(len(branches), chunk)[:, 0], counts))
        self.calls += 1
        return out if len(out) > 1 else out[0]

    def _step_index(self, sigma, ctx: StepContext, branches, chunk) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's step index and whether it is the final step: from the schedule by sigma (an evaluation
        between sigma_i and sigma_i+1 belongs to step i), else as the caller said, else by counting the
        branch's earlier calls (one step per call)."""
        batch, device = sigma.shape[0], sigma.device
        if self.schedule is not None:
            schedule = self.schedule.to(device)
            index = (schedule[None, :] >= sigma[:, None] * (1 - 1e-5)).sum(1).clamp(min=1) - 1
            return index, index == len(schedule) - 1
        final = torch.full((batch,), bool(ctx.final), dtype=torch.bool, device=device)
        if ctx.index is not None:
            return torch.full((batch,), ctx.index, device=device), final
        index = torch.tensor([self.steps.get(b, 0) for b in branches], device=device).repeat_interleave(chunk)
        return index, final

    def summary(self) -> CacheSummary:
        """Counts per call and branch; reading them syncs with the device once."""
        for call, branches, sigma, counts in self._pending:
            per_branch = counts.reshape(len(branches), -1, len(KINDS)).mean(1).tolist()
            for b, s, c in zip(branches, sigma.tolist(), per_branch, strict=True):
                self.records.append(StepRecord(call, b, s, *c))
        self._pending = []
        return CacheSummary(self.policy.describe(), len(self.blocks), list(self.records))


# ---------------------------------------------------------------- public entry points (re-exported by stretto.cache)
ATTR = "_stretto_cache"


def get_handle(model: nn.Module) -> CacheHandle | None:
    """The cache applied to `model`, or None."""
    return model.__dict__.get(ATTR)


def apply(model: nn.Module, policy, blocks=None) -> CacheHandle:
    """Attach `policy` to the block stack of `model` (a stretto model, a diffusers transformer, or a pipeline)."""
    from stretto.cache.policy import CachePolicy, parse_policy

    model = getattr(model, "transformer", None) if _is_pipeline(model) else model
    if isinstance(policy, str):
        policy = parse_policy(policy)
    if not isinstance(policy, CachePolicy):
        raise TypeError(f"policy must be a stretto.cache policy or a string like 'fora:interval=2', got {policy!r}")
    if get_handle(model) is not None:
        raise RuntimeError(
            f"a cache is already applied to this {type(model).__name__}; call stretto.cache.remove() first"
        )
    handle = CacheHandle(model, policy, blocks)
    handle.attach()
    model.__dict__[ATTR] = handle
    handle.owner.__dict__[ATTR] = handle  # step() / remove() also work on the inner diffusers model
    return handle


def remove(model: nn.Module) -> None:
    """Detach the cache from `model`; the model is exactly as before apply()."""
    model = getattr(model, "transformer", None) if _is_pipeline(model) else model
    handle = get_handle(model)
    if handle is None:
        raise RuntimeError(f"no cache is applied to this {type(model).__name__}; nothing to remove")
    handle.detach()
    handle.model.__dict__.pop(ATTR, None)
    handle.owner.__dict__.pop(ATTR, None)


def reset(model: nn.Module, sigmas: torch.Tensor | Sequence[float] | None = None) -> None:
    """Start a new generation: drop all cached state (no-op without a cache). `sigmas` is its schedule."""
    handle = get_handle(model)
    if handle is not None:
        handle.reset(sigmas)


@contextmanager
def applied(model: nn.Module, policy, blocks=None) -> Iterator[CacheHandle | None]:
    """Apply `policy` (a policy, a '--cache' string, or None for no cache) for the `with` block, then remove it."""
    if policy is None:
        yield None
        return
    handle = apply(model, policy, blocks)
    try:
        yield handle
    finally:
        remove(model)


@contextmanager
def step(model: nn.Module, sigma, branches: Sequence[str] = ("cond",), index: int | None = None) -> Iterator[None]:
    """Declare the sigma of the model calls inside and which equal row chunks are which branch.

    A no-op when no cache is applied, so callers may always use it."""
    handle = get_handle(model)
    if handle is None:
        yield
        return
    if isinstance(branches, str) or not branches or len(set(branches)) != len(branches):
        raise ValueError(f"branches must be a non-empty sequence of distinct names, got {branches!r}")
    previous, handle.context = handle.context, StepContext(sigma, tuple(branches), index)
    try:
        yield
    finally:
        handle.context = previous


def summary(model: nn.Module) -> CacheSummary:
    """Computed / reused / forecast block evaluations per call and branch since the last reset."""
    handle = get_handle(model)
    if handle is None:
        raise RuntimeError(f"no cache is applied to this {type(model).__name__}")
    return handle.summary()


def _is_pipeline(obj) -> bool:
    return not isinstance(obj, nn.Module) and isinstance(getattr(obj, "transformer", None), nn.Module)
