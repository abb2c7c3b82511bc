"""How each block of the stack is called: the first block's call as the model made it, adapted per block list.

The model's loop makes one call (to the first block); `BlockCalls` keeps its arguments and, following the
class's `Family` (families.py), builds the call of any block: the blocks of the first list, and of later
lists without their own `args`, get the same arguments in the same positional / keyword layout (Flux's single
blocks, HunyuanVideo's); a list with `args` gets those (Flux2's single blocks take the single-stream
modulation the model computed, Chroma's a slice of one modulation tensor per block). The carried tensors
(`Hidden`, in the first list's return order) go in by name and come back in that order whatever the
block's own return order; a `joined` list gets [text; image] as one tensor, as the model would give it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from stretto.cache.families import DUAL, Family, FromCall, FromModule
from stretto.cache.hidden import Hidden

Prepare = Callable[[str, Any], Any]  # what a block argument becomes for the rows / tokens that run


def carried_args(signature: inspect.Signature) -> tuple[str, ...]:
    """For a block outside the family table: what it hands to the next, in output order, read from its signature
    (both text and image tokens, Flux-style, if it takes both and returns a tuple; else its first argument)."""
    params = list(signature.parameters)
    returns = str(signature.return_annotation).lower()
    dual = all(p in params for p in DUAL) and returns.startswith(("tuple", "typing.tuple"))
    return DUAL if dual else (params[0],)


class BlockCalls:
    """The calls of every block of one model call's stack."""

    def __init__(
        self,
        family: Family,
        sizes: tuple[int, ...],
        signature: inspect.Signature,
        args: tuple,
        kwargs: dict,
        module_outputs: dict[str, Any],
        model: str,
    ):
        self.family, self.sizes, self.signature, self.model = family, sizes, signature, model
        self.carried = family.segments[0].outputs
        bound = signature.bind(*args, **kwargs).arguments
        self.layout = _layout(signature, bound, len(args))
        missing = [n for n in self.carried if n not in bound]
        if missing:
            raise TypeError(f"{model}'s first block was called without {missing}; the cache cannot run its stack")
        self.h: Hidden = tuple(bound[n] for n in self.carried)
        self.first = {n: v for n, v in bound.items() if n not in self.carried}  # the first list's other arguments
        self.outputs = module_outputs
        self.where = [(k, j) for k, n in enumerate(sizes) for j in range(n)]  # block index -> (list, index in it)
        self.bases = [self._base(seg) for seg in family.segments[: len(sizes)]]

    def _base(self, seg) -> dict:
        if seg.args is None:
            return self.first
        base = {}
        for name, source in seg.args.items():
            if isinstance(source, FromCall):
                base[name] = self.first.get(source.name)
            elif isinstance(source, FromModule):
                if source.attr not in self.outputs:
                    raise RuntimeError(f"{self.model}.{source.attr} did not run before its blocks; cannot call them")
                base[name] = self.outputs[source.attr]
            else:
                base[name] = source
        return base

    def arguments(self, i: int) -> dict:
        """The non-carried arguments of block i (before any row or token selection); do not change it."""
        k, j = self.where[i]
        per_block = self.family.segments[k].per_block
        if per_block is None:
            return self.bases[k]
        return {**self.bases[k], **per_block(j, self.outputs, self.sizes)}

    def call(self, i: int, block: nn.Module, h: Hidden, values: dict) -> Hidden:
        """Run block i on the carried tensors `h` with its (prepared) other arguments `values`."""
        seg = self.family.segments[self.where[i][0]]
        extra = [n for n in values if n not in self.first] if len(values) != len(self.first) else []
        if seg.joined:
            text, image = h[self.carried.index("encoder_hidden_states")], h[self.carried.index("hidden_states")]
            values = {**values, "hidden_states": torch.cat([text, image], dim=1)}
        else:
            values = {**values, **dict(zip(self.carried, h, strict=True))}
        if seg.args is None:  # the first list's layout: positional where the model passed positionally
            args, kwargs = [], {}
            for name, kind in self.layout:
                if kind == "pos":
                    args.append(values[name])
                elif kind == "var_pos":
                    args.extend(values[name])
                elif kind == "kw":
                    kwargs[name] = values[name]
                else:
                    kwargs.update(values[name])
            for name in extra:
                kwargs[name] = values[name]  # per-block extras the first call did not have (HunyuanDiT's skip)
            out = block(*args, **kwargs)
        else:
            out = block(**values)
        out = out if isinstance(out, tuple) else (out,)
        if seg.joined:
            if len(out) != 1:
                raise RuntimeError(f"{type(block).__name__} returned {len(out)} tensors; its list is declared joined")
            joined, n_text = out[0], text.shape[1]
            by_name = {"encoder_hidden_states": joined[:, :n_text], "hidden_states": joined[:, n_text:]}
            return tuple(by_name[n] for n in self.carried)
        if len(out) != len(seg.outputs):
            raise RuntimeError(
                f"{type(block).__name__} returned {len(out)} tensors but the cache expected {seg.outputs}; "
                f"the family table entry of {self.model} does not match this block"
            )
        by_name = dict(zip(seg.outputs, out, strict=True))
        return tuple(by_name[n] for n in self.carried)

    def prepared(self, values: dict, prepare: Prepare | None) -> dict:
        """`values` with `prepare` applied to every argument (each element of *args / **kwargs catch-alls)."""
        if prepare is None:
            return values
        out = {}
        for name, value in values.items():
            param = self.signature.parameters.get(name)
            kind = param.kind if param is not None else None
            if kind is inspect.Parameter.VAR_POSITIONAL:
                out[name] = tuple(prepare(name, v) for v in value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                out[name] = {k: prepare(k, v) for k, v in value.items()}
            else:
                out[name] = prepare(name, value)
        return out


def _layout(signature: inspect.Signature, bound: dict, n_positional: int) -> list[tuple[str, str]]:
    """How the model passed each bound argument: 'pos', 'var_pos' (*args), 'kw' or 'var_kw' (**kwargs)."""
    layout, position = [], 0
    for name, param in signature.parameters.items():
        if name not in bound:
            continue
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            layout.append((name, "var_pos"))
        elif param.kind is inspect.Parameter.VAR_KEYWORD:
            layout.append((name, "var_kw"))
        elif position < n_positional and param.kind is not inspect.Parameter.KEYWORD_ONLY:
            layout.append((name, "pos"))
            position += 1
        else:
            layout.append((name, "kw"))
    return layout
