"""`stretto bench text --peers`: diffusers' and transformers' diffusion-LM engines beside stretto, in one run.

Every engine decodes the same prompts, greedy (temperature 0), on tiny random models built from config in the
published layouts (`tiny_published`; no hub), loaded by stretto as a user's folder would be. Per peer and model:
the peer's tokens/s, model calls and token positions run; stretto with the same algorithm (`same_tokens`: exact
token equality with the peer); stretto's cached settings (their speedup over the peer, and the ratio of token
positions the cache saves, which is the speedup a compute-bound model would see).

- diffusers `LLaDA2Pipeline` + `BlockRefinementScheduler`, editing off. The algorithm: blocks aligned at slot 0,
  decoded left to right; each step re-runs every slot up to the end of the current block (no KV cache) and
  commits the scheduled top-k of the block's masked positions (block length split evenly over the steps), or
  every one over the threshold when those are more. LLaDA 2.0 itself is an MoE with no transformers class; the
  pipeline only calls `model(ids, attention_mask=, position_ids=).logits`, so `PipelineLM` hands it the model
  stretto hosts, at that one call. stretto's match: `lowconf:tokens=t,tau=threshold` with the pipeline given
  ceil(block / t) steps. On a block-causal model (SDAR, Fast-dLLM v2) cutting the window at the block end changes
  nothing (no query sees a later block), so stretto's `none` and its exact `block` / `block:fuse` caches give the
  pipeline's tokens. On a bidirectional model (LLaDA, Dream) the cut is the difference (`WINDOW_NOTE`).
- diffusers `DiffusionGemmaPipeline` (`BlockRefinementScheduler` in its uniform-corruption mode) and transformers'
  `DiffusionGemmaForBlockDiffusion.generate` (entropy-bound sampler, its defaults): stretto does not decode
  DiffusionGemma (`hf_load.unsupported_reason`), so these rows report the peer alone, with the reason.

Conditions for the same algorithm, met by the prompts built here: the decoding block is the model's block (a
shorter one would let stretto's queries see the rest of the model block, the pipeline's not), the prompt length
is a multiple of it (the pipeline aligns blocks at slot 0, so it would decode a prompt's tail with the first
answer tokens) and every prompt has that length (the pipeline gives padding position ids, stretto starts each row
at 0). Both engines decode every token (no early stop). Speeds: the fastest of `repeats` runs after a warm-up.
A peer row's `decode` is stretto's spelling of the peer's algorithm; its `same_tokens` is that of stretto's
same-algorithm row (None: stretto has none), and its `note` says why the tokens cannot agree, where they cannot.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

from stretto.bench.report import print_table
from stretto.bench.tiny_published import CHARS, FAMILIES, Size, write_checkpoint, write_diffusion_gemma
from stretto.models.hf_lm import PublishedLM
from stretto.models.hf_load import load_published, unsupported_reason
from stretto.models.text_lm import gen_blocks
from stretto.pipelines.text import generate
from stretto.pipelines.text.decode import banned_tokens

LLADA2 = "diffusers:LLaDA2Pipeline"
GEMMA_PIPELINE = "diffusers:DiffusionGemmaPipeline"
GEMMA_GENERATE = "transformers:generate"
WINDOW_NOTE = (
    "not the same algorithm on a bidirectional model: LLaDA2Pipeline runs each step on the slots up to the end of "
    "the current block, so its queries never see the masked suffix; stretto (as LLaDA's reference decoding) always "
    "runs a bidirectional model with the whole canvas. The two agree only when gen_length equals the block length"
)
GEMMA_GENERATE_NOTE = "; and generate samples (multinomial, its temperature annealed from 0.8 to 0.4)"
PEER_SIZE = Size(hidden=128, layers=4)  # small, and wide enough that a call is not all Python overhead
CACHED = {"block-lm": ("block", "block:fuse"), "masked-lm": ("prefix", "dual")}


@dataclass
class Run:
    """One engine's decoding of the prompts: the answer tokens (B, gen_length), its time and what it ran."""

    tokens: torch.Tensor
    seconds: float  # wall time
    cpu_seconds: float  # this process's CPU time: on a shared, loaded machine the steadier of the two
    nfe: int  # model calls (a DiffusionGemma step counts its decoder call; its encoder calls count too)
    positions: int  # token positions run per row, summed over calls


class PipelineLM(nn.Module):
    """A stretto-hosted published LM behind the call `LLaDA2Pipeline` makes: `model(ids, attention_mask=,
    position_ids=).logits`.

    The one boundary between the peer and the model: stretto's own forward (its 4D mask over stretto's block
    layout: the prompt is block 0, the model's blocks follow from gen_start; its logit shift), and the tokens
    stretto never commits (the mask, and padding unless it is end-of-text) scored -inf, as stretto's decoder scores
    them, so both engines rank the same distribution. Counts calls and positions as stretto's `DecodeStats` does.
    """

    def __init__(self, lm: PublishedLM, gen_start: int):
        super().__init__()
        self.lm, self.gen_start, self.banned = lm, gen_start, banned_tokens(lm)
        self.calls = self.positions = 0

    @property
    def device(self) -> torch.device:  # what a diffusers pipeline asks its modules
        return next(self.lm.parameters()).device

    def forward(self, input_ids: torch.Tensor, attention_mask=None, position_ids=None) -> CausalLMOutput:
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("PipelineLM decodes unpadded prompts of one length; the attention mask has padding")
        t = input_ids.shape[1]
        self.calls, self.positions = self.calls + 1, self.positions + t
        blocks = gen_blocks(self.gen_start, t, self.lm.config.block_size, input_ids.device)
        logits = self.lm(input_ids, position_ids, blocks, gen_start=self.gen_start)
        logits[..., self.banned] = float("-inf")
        return CausalLMOutput(logits=logits)


def peer_prompts(n: int, length: int) -> list[str]:
    """n distinct prompts of `length` characters of the tiny tokenizer (no spaces: one token per character)."""
    chars = CHARS.replace(" ", "")
    return ["".join(chars[(7 * i + 5 * j + i * j) % len(chars)] for j in range(length)) for i in range(n)]


def encode_equal(tokenizer, prompts: list[str]) -> torch.Tensor:
    """The prompts' token ids (B, P): a ValueError unless all have one length (the peers take no padding)."""
    encoded = [tokenizer.encode(p) for p in prompts]
    lengths = sorted({len(e) for e in encoded})
    if len(lengths) != 1:
        raise ValueError(f"peer prompts must encode to one length (no padding), got lengths {lengths}")
    return torch.tensor(encoded)


def run_llada2(lm: PublishedLM, prompts: list[str], gen_length: int, block_length: int, tokens: int, threshold: float):
    """diffusers' LLaDA2Pipeline on a stretto-hosted model: greedy, editing off, every token decoded."""
    from diffusers import BlockRefinementScheduler, LLaDA2Pipeline

    ids = encode_equal(lm.tokenizer, prompts).to(next(lm.parameters()).device)
    if ids.shape[1] % block_length or gen_length % block_length:
        raise ValueError(
            f"prompt length ({ids.shape[1]}) and gen_length ({gen_length}) must be multiples of block_length "
            f"({block_length}): LLaDA2Pipeline aligns its blocks at slot 0"
        )
    model = PipelineLM(lm, ids.shape[1])
    scheduler = BlockRefinementScheduler(block_length=block_length, threshold=threshold)
    pipe = LLaDA2Pipeline(model=model, scheduler=scheduler, tokenizer=None)
    pipe.set_progress_bar_config(disable=True)
    cfg = lm.config
    with Clock() as clock:
        out = pipe(
            input_ids=ids,
            gen_length=gen_length,
            block_length=block_length,
            num_inference_steps=math.ceil(block_length / tokens),
            threshold=threshold,
            editing_threshold=None,
            sampling_method="greedy",
            eos_early_stop=False,
            mask_token_id=cfg.mask_id,
            eos_token_id=cfg.eot_id,
            output_type="seq",
        )
    return Run(out.sequences.cpu(), clock.wall, clock.cpu, model.calls, model.positions)


def run_stretto(lm: PublishedLM, prompts: list[str], gen_length: int, block_length: int, decode: str, cache: str):
    """stretto's text pipeline, every token decoded (no early stop, as the peers here)."""
    with Clock() as clock:
        res = generate(lm, prompts, gen_length, block_length, decode, cache, early_stop=False)
    return Run(res.canvas[:, -gen_length:].cpu(), clock.wall, clock.cpu, res.stats.nfe, res.stats.positions)


class Clock:
    """Wall and process CPU time of a `with` block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


class _Counted:
    """Count the calls and token positions of a DiffusionGemma's encoder and decoder (forward pre-hooks)."""

    def __init__(self, model):
        self.calls = self.positions = 0
        inner = model.model
        self.hooks = [
            inner.encoder.register_forward_pre_hook(self._count("input_ids"), with_kwargs=True),
            inner.decoder.register_forward_pre_hook(self._count("decoder_input_ids"), with_kwargs=True),
        ]

    def _count(self, key: str):
        def hook(module, args, kwargs):
            self.calls += 1
            self.positions += kwargs[key].shape[1]

        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()


def gemma_tokenizer(folder: Path):
    """The tiny DiffusionGemma's tokenizer with a chat template that is the prompt itself (the pipeline needs one)."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    return tok


def run_gemma_pipeline(model, tokenizer, prompts: list[str], gen_length: int, steps: int, threshold: float, seed=0):
    """diffusers' DiffusionGemmaPipeline: BlockRefinementScheduler (uniform corruption), greedy, its stopping."""
    from diffusers import BlockRefinementScheduler, DiffusionGemmaPipeline

    pipe = DiffusionGemmaPipeline(
        model=model, scheduler=BlockRefinementScheduler(threshold=threshold), processor=tokenizer
    )
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    with _Counted(model) as counted, Clock() as clock:
        out = pipe(
            prompt=prompts, gen_length=gen_length, num_inference_steps=steps, eos_early_stop=False,
            generator=generator, output_type="seq",
        )  # fmt: skip
    return Run(out.sequences[:, :gen_length].cpu(), clock.wall, clock.cpu, counted.calls, counted.positions)


def run_gemma_generate(model, tokenizer, prompts: list[str], gen_length: int, steps: int, seed: int = 0):
    """transformers' DiffusionGemma generate: its entropy-bound sampler and defaults, `steps` per canvas."""
    ids = encode_equal(tokenizer, prompts).to(model.device)
    with torch.random.fork_rng(devices=[]), _Counted(model) as counted:  # generate draws from the global RNG
        torch.manual_seed(seed)
        with Clock() as clock:
            out = model.generate(ids, max_new_tokens=gen_length, max_denoising_steps=steps)
    answer = out.sequences[:, ids.shape[1] :][:, :gen_length].cpu()
    return Run(answer, clock.wall, clock.cpu, counted.calls, counted.positions)


def fastest(run: Callable[[], Run], repeats: int) -> Run:
    """The fastest of `repeats` runs after one warm-up (wall and CPU time each at its least); the tokens of every
    run must agree (same seed)."""
    first = run()
    runs = [run() for _ in range(repeats)]
    if not all(torch.equal(r.tokens, first.tokens) for r in runs):
        raise RuntimeError("an engine gave different tokens on repeated runs with the same settings")
    best = min(runs, key=lambda r: r.seconds)
    return dataclasses.replace(best, cpu_seconds=min(r.cpu_seconds for r in runs))


def row(engine: str, model: str, run: Run, decode: str, cache: str, against: Run | None = None, **extra) -> dict:
    """One engine's row; a stretto row also holds its comparison with the peer's run (`against`)."""
    b, g = run.tokens.shape
    out = {
        "engine": engine, "model": model, "decode": decode, "cache": cache, "batch_size": b, "gen_length": g,
        "tokens": b * g, "seconds": run.seconds, "tokens_per_s": b * g / max(run.seconds, 1e-9),
        "cpu_seconds": run.cpu_seconds, "nfe": run.nfe, "positions": run.positions,
    }  # fmt: skip
    if against is not None:
        out["same_tokens"] = torch.equal(run.tokens, against.tokens)
        out["speedup"] = against.seconds / max(run.seconds, 1e-9)
        out["cpu_speedup"] = against.cpu_seconds / max(run.cpu_seconds, 1e-9)
        out["positions_saved"] = against.positions / max(run.positions, 1)  # the speedup a compute-bound model sees
    return out | extra


def llada2_rows(name, lm, prompts, gen_length, block_length, tokens, threshold, repeats) -> list[dict]:
    """LLaDA2Pipeline on one hosted model, stretto with its algorithm (no cache), then stretto's cached settings."""
    decode = f"lowconf:tokens={tokens},tau={threshold:g}"
    peer = fastest(lambda: run_llada2(lm, prompts, gen_length, block_length, tokens, threshold), repeats)
    rows = []
    for cache in ("none", *CACHED[lm.kind]):
        mine = fastest(lambda c=cache: run_stretto(lm, prompts, gen_length, block_length, decode, c), repeats)
        rows.append(row("stretto", name, mine, decode, cache, peer, peer=LLADA2, block_length=block_length))
    exact = rows[0]["same_tokens"]
    note = None if lm.block_causal else WINDOW_NOTE
    if lm.block_causal and not exact:  # the same algorithm: a difference would be a finding, said so
        note = "the same algorithm gave different tokens (look for float ties between the two call shapes)"
    peer_row = row(LLADA2, name, peer, decode, "none", block_length=block_length, same_tokens=exact, note=note)
    return [peer_row, *rows]


def gemma_rows(folder: Path, gen_length, tokens, threshold, n: int, prompt_len: int, repeats: int, device="cpu"):
    """The DiffusionGemma peers, alone: stretto does not decode this model, the note says why."""
    model = load_published(folder, device=device)
    tok = gemma_tokenizer(folder)
    prompts = peer_prompts(n, prompt_len)
    canvas = model.config.canvas_length
    steps = math.ceil(canvas / tokens)
    reason = unsupported_reason("diffusion_gemma")
    pipe = fastest(lambda: run_gemma_pipeline(model, tok, prompts, gen_length, steps, threshold), repeats)
    gen = fastest(lambda: run_gemma_generate(model, tok, prompts, gen_length, steps), repeats)
    extra = {"block_length": canvas, "same_tokens": None}
    return [
        row(GEMMA_PIPELINE, "diffusion_gemma", pipe, f"uniform:threshold={threshold:g},steps={steps}",
            "encoder KV (DynamicCache)", note=reason, **extra),
        row(GEMMA_GENERATE, "diffusion_gemma", gen, f"entropy-bound:steps={steps}", "encoder KV (DynamicCache)",
            note=reason + GEMMA_GENERATE_NOTE, **extra),
    ]  # fmt: skip


def run_text_peers(
    families: tuple[str, ...] | list[str] = (*FAMILIES, "diffusion_gemma"),
    gen_length: int = 32,
    batch_size: int = 4,
    tokens: int = 1,
    threshold: float = 0.7,
    size: Size = PEER_SIZE,
    prompt_blocks: int = 2,
    repeats: int = 3,
    device: str | torch.device = "cpu",
) -> dict:
    """The peer comparison: one row per engine and setting, and the settings shared by all; see the module doc.

    families: the tiny models to build (published layouts, and "diffusion_gemma"); tokens: positions committed
    per step (steps per block = ceil(block / tokens)); threshold: LLaDA2Pipeline's (stretto's tau) and the
    DiffusionGemmaPipeline scheduler's; prompt_blocks: prompt length in blocks.
    """
    known = (*FAMILIES, "diffusion_gemma")
    for f in families:
        if f not in known:
            raise ValueError(f"unknown peer model {f!r}; allowed: {', '.join(known)}")
    if gen_length < 1 or batch_size < 1 or tokens < 1 or repeats < 1 or prompt_blocks < 1:
        raise ValueError(
            "gen_length, batch_size, tokens, prompt_blocks and repeats must be >= 1, got "
            f"{gen_length}, {batch_size}, {tokens}, {prompt_blocks}, {repeats}"
        )
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    # the context a run needs: the prompt, the answer, and DiffusionGemma's last canvas rounded up
    size = dataclasses.replace(size, max_len=max(size.max_len, 4 * prompt_blocks + gen_length + 8))
    rows = []
    with tempfile.TemporaryDirectory(prefix="stretto-peers-") as tmp:
        for family in families:
            folder = Path(tmp) / family
            if family == "diffusion_gemma":
                write_diffusion_gemma(folder, size=size)
                prompt_len = 4 * prompt_blocks  # in blocks of the other models, for the same prompts
                rows += gemma_rows(folder, gen_length, tokens, threshold, batch_size, prompt_len, repeats, device)
                continue
            write_checkpoint(family, folder, size=size)
            lm = load_published(folder, device=device)
            block = lm.config.block_size or 4  # the model's block; 4 (the block-causal ones') for LLaDA / Dream
            if gen_length % block:
                raise ValueError(f"gen_length ({gen_length}) must be a multiple of {family}'s block ({block})")
            prompts = peer_prompts(batch_size, block * prompt_blocks)
            rows += llada2_rows(family, lm, prompts, gen_length, block, tokens, threshold, repeats)
    return {
        "size": {"hidden": size.hidden, "layers": size.layers, "heads": size.heads, "max_len": size.max_len},
        "tokens_per_step": tokens,
        "threshold": threshold,
        "repeats": repeats,
        "rows": rows,
    }


PEER_TABLE = [
    ("engine", "engine", "<32"), ("model", "model", "<15"), ("decode", "decode", "<26"), ("cache", "cache", "<26"),
    ("tok/s", "tokens_per_s", ">8.1f"), ("nfe", "nfe", ">5"), ("positions", "positions", ">9"),
    ("same", lambda r: {True: "yes", False: "no", None: "-"}[r.get("same_tokens")], ">4"),
    ("speedup", lambda r: f"{r['speedup']:.2f}x" if "speedup" in r else "", ">7"),
    ("cpu", lambda r: f"{r['cpu_speedup']:.2f}x" if "cpu_speedup" in r else "", ">6"),
    ("saved", lambda r: f"{r['positions_saved']:.1f}x" if "positions_saved" in r else "", ">6"),
]  # fmt: skip


def peer_summary(rows: list[dict]) -> list[str]:
    """One line per peer run: its tokens/s, whether stretto's same algorithm matched it, stretto's fastest cache."""
    lines = []
    for peer in (r for r in rows if r["engine"] != "stretto"):
        mine = [
            r for r in rows if r["engine"] == "stretto" and r["model"] == peer["model"] and r["peer"] == peer["engine"]
        ]
        head = f"{peer['model']}: {peer['engine']} {peer['tokens_per_s']:.0f} tok/s"
        if not mine:
            lines.append(f"{head}; stretto does not decode this model (the row's note says why)")
            continue
        same = {True: "the same tokens", False: "different tokens"}[mine[0]["same_tokens"]]
        best = max(mine[1:] or mine, key=lambda r: r["tokens_per_s"])
        best_same = "same tokens" if best["same_tokens"] else "different tokens"
        lines.append(
            f"{head}; stretto {mine[0]['decode']} | {mine[0]['cache']}: {same}, {mine[0]['tokens_per_s']:.0f} "
            f"tok/s; stretto {best['cache']}: {best['tokens_per_s']:.0f} tok/s = {best['speedup']:.2f}x the peer "
            f"({best['cpu_speedup']:.2f}x in CPU time; {best['positions_saved']:.1f}x fewer token positions; "
            f"{best_same})"
        )
    return lines


def print_peers(result: dict) -> None:
    """The peer table and its summary lines."""
    print_table(result["rows"], PEER_TABLE)
    for line in peer_summary(result["rows"]):
        print(line)
