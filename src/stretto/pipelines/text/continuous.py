"""Continuous batching of masked-diffusion decoding (dInfer 2025; SGLang, Zheng et al. 2024): rows leave when done.

A static batch steps until its least confident row is done, so most of a batch's calls go to its few slowest
rows. Here `lanes` batch rows each decode one prompt; a row that finishes leaves its lane at once and the next
waiting prompt takes the lane. Every lane runs its own `decode_program` with its own copy of the rule and the
cache mode (its own block, step and refresh state), so each row decodes as it would alone (batch 1); the
scheduler only batches the model calls the rows ask for. Each tick it takes the pending `Call` of every lane,
groups the calls by length (rows at different blocks ask for slot ranges of the same length at different
starts) and runs one model call per group, rows at their own starts.

The KV cache: one `KVCache` of (lanes, width) slots for the whole run, its lane's rows cleared when a prompt
takes a lane. Every prompt is left-padded to the longest prompt, so all lanes put the answer at the same slot
and share the slot -> block map; a call on some lanes reads and writes only their rows (`KVCache.rows`, per-row
`start`). One cache rather than one per lane: a call must hold the K/V of all its rows in one tensor anyway (a
gather from one buffer, not a concatenation of many), and the budget check and byte count stay in one place.
"""

from __future__ import annotations

import copy
import heapq
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from stretto.models.kv_attention import Probe
from stretto.models.text_lm import TextLM, gen_blocks, left_pad_positions
from stretto.pipelines.text.caches import CacheMode
from stretto.pipelines.text.decode import Program, banned_tokens, decode_program
from stretto.pipelines.text.model_calls import Call, DecodeStats, Reply, Slots
from stretto.pipelines.text.result import TextResult, answer_tokens
from stretto.pipelines.text.rules import Rule


class Lanes:
    """The canvas, RoPE positions and KV cache of the lanes; runs a model call on some lanes at their own starts."""

    def __init__(self, model: TextLM, lanes: int, gen_start: int, width: int, with_cache: bool):
        cfg = model.config
        self.model, self.gen_start, self.mask_id, self.pad_id = model, gen_start, cfg.mask_id, cfg.pad_id
        device = next(model.parameters()).device
        self.canvas = torch.full((lanes, width), cfg.mask_id, dtype=torch.long, device=device)
        self.positions = torch.zeros_like(self.canvas)
        self.blocks = gen_blocks(gen_start, width, cfg.block_size, device)
        self.kv = model.new_cache(lanes, width) if with_cache else None
        self.every_lane = list(range(lanes))
        self.nfe = 0  # model calls made, each running one group of lanes

    def admit(self, lane: int, ids: list[int]) -> None:
        """Put a prompt (token ids) into a lane: left-padded, followed by masks; the lane's cached K/V forgotten."""
        row, p = self.canvas[lane], self.gen_start - len(ids)
        row.fill_(self.mask_id)
        row[:p] = self.pad_id
        row[p : self.gen_start] = torch.tensor(ids, device=row.device)
        self.positions[lane] = left_pad_positions(row[None], self.pad_id)[0]
        if self.kv is not None:
            self.kv.clear_rows(torch.tensor([lane], device=row.device))

    def run(self, lanes: list[int], starts: list[int], length: int, probe_layer: int | None) -> Reply:
        """Logits (n, length, vocab) of `length` slots of each lane from its own start, and the call's probe."""
        device = self.canvas.device
        rows, first = torch.tensor(lanes, device=device), torch.tensor(starts, device=device)
        idx = first[:, None] + torch.arange(length, device=device)
        ids, positions = self.canvas[rows[:, None], idx], self.positions[rows[:, None], idx]
        if min(starts) == max(starts):  # one start: the model's plain slice path
            start, blocks = starts[0], self.blocks[starts[0] : starts[0] + length]
        else:
            start, blocks = first, self.blocks[idx]
        kv = None if self.kv is None else self.kv.rows(None if lanes == self.every_lane else rows)
        self.nfe += 1
        out = self.model(ids, positions, blocks, kv_cache=kv, start=start, gen_start=self.gen_start,
                         probe_layer=probe_layer)  # fmt: skip
        return out if probe_layer is not None else (out, None)


def row_probe(probe: Probe | None, i: int, start: int) -> Probe | None:
    """Row i of a batched call's probe, as that row's own call (started at `start`) would have reported it."""
    if probe is None:
        return None
    drift = {layer: d[i : i + 1] for layer, d in probe.drift.items()}
    attention = None if probe.attention is None else probe.attention[i : i + 1]
    return Probe(probe.layer, start, drift, attention)


@dataclass
class Lane:
    """One prompt in a lane: its program, the call it waits for, and when it entered."""

    index: int  # the prompt's position in the input
    prompt_len: int
    calls: Slots
    program: Program
    started: float
    call: Call | None = None


class ContinuousBatch:
    """Iterate to decode the prompts `lanes` at a time: yields (index, TextResult) as each prompt finishes.

    Each result is that prompt's alone: its text, its own counts (nfe: the model calls it took part in), the
    seconds from entering a lane to finishing, and its canvas without the padding to the longest prompt.
    After the run, `stats` holds the whole run's counts (nfe: model calls made; steps: scheduler ticks;
    positions: mean per prompt; refreshes and blocks: summed over prompts).
    """

    def __init__(
        self,
        model: TextLM,
        encoded: list[list[int]],
        gen_length: int,
        block_length: int,
        rule: Rule,
        cache: CacheMode,
        lanes: int,
        early_stop: bool = True,
    ):
        if lanes < 1:
            raise ValueError(f"batch_size must be >= 1, got {lanes}")
        self.model, self.encoded, self.block_length = model, encoded, block_length
        self.rule, self.cache, self.early_stop = rule, cache, early_stop
        self.gen_start = max(len(e) for e in encoded)
        self.lanes = Lanes(model, min(lanes, len(encoded)), self.gen_start, self.gen_start + gen_length, cache.uses_kv)
        self.stats = DecodeStats(cache_bytes=0 if self.lanes.kv is None else self.lanes.kv.nbytes)

    def _admit(self, lane: int, index: int) -> Lane:
        ids = self.encoded[index]
        self.lanes.admit(lane, ids)
        calls = Slots(self.model, self.lanes.canvas[lane : lane + 1], self.gen_start)
        calls.stats.cache_bytes = self.stats.cache_bytes  # the run's one cache, shared by every lane
        rule, cache = copy.deepcopy(self.rule), copy.deepcopy(self.cache)  # per-row state: block, step, refresh
        eot = self.model.config.eot_id
        program = decode_program(calls, self.block_length, rule, cache, banned_tokens(self.model), eot, self.early_stop)
        return Lane(index, len(ids), calls, program, time.perf_counter())

    def _result(self, lane: Lane) -> TextResult:
        row = lane.calls.canvas[0, self.gen_start - lane.prompt_len :].clone()[None]
        gen = row[:, lane.prompt_len :].cpu()
        text = self.model.tokenizer.decode(gen[0])
        tokens = answer_tokens(gen, self.model.config.eot_id)
        return TextResult([text], lane.calls.stats, time.perf_counter() - lane.started, tokens, row)

    def _tick(self, busy: dict[int, Lane]) -> dict[int, Reply]:
        """Run every pending call, one model call per (length, probe layer); the reply for each lane."""
        shift = self.model.logit_shift
        groups: dict[tuple[int, int | None], list[tuple[int, int, int]]] = {}
        for lane_id in sorted(busy):
            call = busy[lane_id].call
            first = call.lo - 1 if shift and call.lo > 0 else call.lo  # a shifted model scores slot lo at lo - 1
            groups.setdefault((call.hi - first, call.probe_layer), []).append((lane_id, first, call.lo))
        replies = {}
        for (length, probe_layer), members in groups.items():
            logits, probe = self.lanes.run([m[0] for m in members], [m[1] for m in members], length, probe_layer)
            for i, (lane_id, first, lo) in enumerate(members):
                stats = busy[lane_id].calls.stats
                stats.nfe, stats.positions = stats.nfe + 1, stats.positions + length
                replies[lane_id] = (logits[i : i + 1, lo - first :], row_probe(probe, i, first))
        self.stats.steps += 1
        return replies

    def _account(self, row: DecodeStats, positions: int) -> None:
        """Add a finished row's counts to the run's (positions: the mean per prompt over the whole input)."""
        self.stats.refreshes += row.refreshes
        self.stats.blocks += row.blocks
        self.stats.nfe, self.stats.positions = self.lanes.nfe, positions // len(self.encoded)

    @torch.no_grad()
    def __iter__(self) -> Iterator[tuple[int, TextResult]]:
        self.stats, self.lanes.nfe = DecodeStats(cache_bytes=self.stats.cache_bytes), 0  # counts per run
        waiting, free = deque(range(len(self.encoded))), list(self.lanes.every_lane)
        busy: dict[int, Lane] = {}
        finished: list[int] = []

        def advance(lane_id: int, reply: Reply | None) -> None:
            try:
                busy[lane_id].call = busy[lane_id].program.send(reply)
            except StopIteration:
                finished.append(lane_id)

        positions = 0
        while waiting or busy:
            while free and waiting:  # a finished row's lane is taken by the next prompt before the next call
                lane_id = heapq.heappop(free)
                busy[lane_id] = self._admit(lane_id, waiting.popleft())
                advance(lane_id, None)
            if len(finished) < len(busy):
                for lane_id, reply in self._tick({k: v for k, v in busy.items() if k not in finished}).items():
                    advance(lane_id, reply)
            for lane_id in sorted(finished):
                lane = busy.pop(lane_id)
                heapq.heappush(free, lane_id)
                positions += lane.calls.stats.positions
                self._account(lane.calls.stats, positions)
                yield lane.index, self._result(lane)
            finished.clear()
