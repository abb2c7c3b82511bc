"""How the cache takes over a model's block stack: its block lists are swapped for lists that run the cache.

The model's block lists (diffusers Flux: `transformer_blocks` then `single_transformer_blocks`; SD3 /
DiT: `transformer_blocks`; Wan: `blocks`) are swapped for `CachedBlockList`s holding the same block
modules (so parameters, `state_dict` keys, `.to()`, indexing and forward hooks on the blocks are
unchanged). While the model that owns the lists runs its forward, iterating the first list yields one
`StackRunner` and the other lists yield nothing: the model's own `for block in self.transformer_blocks`
loop then makes exactly one call, and the runner hands the whole stack to the cache. Blocks the policy
skips are never called (no Python call per skipped block); blocks it computes are called as modules, so
`BlockCounter`'s hooks count real evaluations. Outside the owner's forward the lists iterate normally, and so
they do inside it while the cache is bypassed (a stream's commit pass: stretto.cache.bypass).

Which lists a diffusers class has, and how its blocks are called, is its table entry (families.py); a
diffusers class without one is refused with an error naming it. Other models (stretto's own, a user's)
are searched for the `KNOWN_STACKS` attributes and their blocks' interface read from the first block's
signature. The owner's forward is hooked to read its timestep (by keyword or position) and to refuse the
arguments the runner would drop (ControlNet residuals, SD3 `skip_layers`); submodules whose outputs later
block lists need (Flux2's single-stream modulation) are hooked to keep their output.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from stretto.cache.block_calls import carried_args
from stretto.cache.families import FAMILIES, REFUSED, Family, Segment, family_of

# models outside the family table (stretto's own, a user's): (attribute names of the block lists, in
# execution order), tried in this order
KNOWN_STACKS: tuple[tuple[str, ...], ...] = (
    ("transformer_blocks", "single_transformer_blocks"),
    ("transformer_blocks",),
    ("blocks",),
    ("layers",),
)
# where the model holding the lists may sit inside the object passed to apply()
OWNER_PATHS: tuple[str, ...] = ("", "transformer", "model")

BlockLists = Sequence[nn.ModuleList | str] | nn.ModuleList | str  # what apply(..., blocks=) accepts


class StackRunner:
    """What iterating the first block list yields during the owner's forward: one call runs the whole stack."""

    def __init__(self, run: Callable[[tuple, dict], Any]):
        self.run = run

    def __call__(self, *args, **kwargs):
        return self.run(args, kwargs)


class CachedBlockList(nn.ModuleList):
    """A ModuleList of the same blocks whose iteration, during the owner's forward, is the cache's runner."""

    _stretto_swap: BlockListSwap
    _stretto_first: bool

    def __iter__(self) -> Iterator[nn.Module]:
        swap = self.__dict__.get("_stretto_swap")
        if swap is not None and swap.active and not swap.bypass:
            return iter([swap.runner] if self._stretto_first else [])
        return iter(self._modules.values())


class BlockListSwap:
    """The block lists of one model and their swap: while the owner's forward runs, the stack goes to `run`."""

    def __init__(self, model: nn.Module, blocks: BlockLists | None, run: Callable[[tuple, dict], Any]):
        self.lists = find_stack(model, blocks)
        owners = {id(o) for o, _ in self.lists}
        if len(owners) != 1:
            raise ValueError("all block lists must belong to the same module (the one whose forward runs them)")
        for owner, name in self.lists:
            if isinstance(getattr(owner, name), CachedBlockList):
                raise RuntimeError(
                    f"a cache is already applied to {type(owner).__name__}.{name}; call stretto.cache.remove() first"
                )
        self.owner = self.lists[0][0]
        self.originals = [getattr(o, n) for o, n in self.lists]
        self.blocks = [b for lst in self.originals for b in lst]
        self.family = stack_family(self.owner, [n for _, n in self.lists], self.originals)
        self.runner = StackRunner(run)
        self.active = False  # the owner's forward is running
        self.bypass = False  # the owner's forward runs its own blocks (stretto.cache.bypass)
        self.timestep: torch.Tensor | float | None = None  # its `timestep` argument (the sigma when none is given)
        self.module_outputs: dict[str, Any] = {}  # outputs of the family's captured submodules in this forward
        self._forward = inspect.signature(self.owner.forward)

    def attach(self) -> None:
        """Swap the block lists in and hook the owner's forward."""
        for i, ((owner, name), original) in enumerate(zip(self.lists, self.originals, strict=True)):
            swapped = CachedBlockList(list(original))
            swapped.__dict__["_stretto_swap"] = self
            swapped.__dict__["_stretto_first"] = i == 0
            setattr(owner, name, swapped)
        self._hooks = [
            self.owner.register_forward_pre_hook(self._enter, with_kwargs=True),
            self.owner.register_forward_hook(self._leave, always_call=True),
        ]
        for attr in self.family.captures():
            module = getattr(self.owner, attr, None)
            if not isinstance(module, nn.Module):
                raise ValueError(f"{type(self.owner).__name__} has no submodule {attr!r}; its family entry is wrong")
            self._hooks.append(module.register_forward_hook(self._keeper(attr)))

    def _keeper(self, attr: str):
        def keep(module, args, output):
            if self.active:
                self.module_outputs[attr] = output

        return keep

    def detach(self) -> None:
        """Remove the hooks and put the original block lists back."""
        for hook in self._hooks:
            hook.remove()
        for (owner, name), original in zip(self.lists, self.originals, strict=True):
            setattr(owner, name, original)

    def _enter(self, module, args, kwargs):
        try:
            bound = self._forward.bind(*args, **kwargs).arguments
        except TypeError:
            bound = dict(kwargs)  # the forward itself will raise the precise error
        for name in self.family.refuse:
            if bound.get(name) is not None and bound.get(name) is not False and not _empty(bound.get(name)):
                raise ValueError(
                    f"the feature cache cannot run {type(module).__name__} with {name}= (it is applied inside the "
                    "block loop the cache replaces); pass None or remove the cache"
                )
        self.active = True
        self.module_outputs = {}
        self.timestep = bound.get(self.family.timestep)

    def _leave(self, module, args, output):
        self.active = False


def _empty(value: Any) -> bool:
    return isinstance(value, (list, tuple, dict)) and len(value) == 0


def check_supported(model: nn.Module) -> None:
    """Raise for a class the cache refuses, or a diffusers class without a table entry (guessing its blocks'
    interface is how wrong outputs happen)."""
    cls = type(model).__name__
    if cls in REFUSED:
        raise ValueError(f"the feature cache does not support {cls}: {REFUSED[cls]}")
    if family_of(type(model)) is None and type(model).__module__.startswith("diffusers."):
        raise ValueError(
            f"the feature cache has no table entry for {cls}; supported: {', '.join(FAMILIES)} "
            "(see stretto.cache.families)"
        )


def stack_family(owner: nn.Module, names: list[str], lists: list[nn.ModuleList]) -> Family:
    """The family that runs these lists of `owner`: its table entry's segments for them, or one read from the
    first block's signature (every block called like the first) for models without an entry."""
    check_supported(owner)
    family = family_of(type(owner))
    if family is None:
        carried = carried_args(inspect.signature(lists[0][0].forward))
        return Family(tuple(Segment(n, carried) for n in names), token_level=True)
    declared = [s.attr for s in family.segments]
    if names != declared[: len(names)]:
        raise ValueError(
            f"{type(owner).__name__}'s block lists run in the order {declared}; the cache can take the first k of "
            f"them, got {names}"
        )
    return family


def find_stack(model: nn.Module, blocks: BlockLists | None) -> list[tuple[nn.Module, str]]:
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
        check_supported(owner)
        family = family_of(type(owner))
        if family is not None:
            cls = type(owner).__name__
            sizes = [len(getattr(owner, s.attr, None) or ()) for s in family.segments]
            if not sizes[0]:
                raise ValueError(f"{cls} has no blocks in {family.segments[0].attr}; there is nothing to cache")
            used = sizes.index(0) if 0 in sizes else len(sizes)  # a later list left empty by the config is not run
            return [(owner, s.attr) for s in family.segments[:used]]
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
