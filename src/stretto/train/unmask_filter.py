"""Train Learn2PD's filter (Bao et al. 2025) on decoding traces of a shipped text model: `stretto train unmask-filter`.

Traces: the baseline decoder (LLaDA's low-confidence rule, one token per step, no cache) completes train-split
prompts (never held-out ones: the collector refuses them); at every step, every masked position of the current
block gives one sample, its `position_features` and the label "its argmax now is the token it ends up with"
(the paper's oracle, which commits a position as soon as that holds). The filter, a tiny MLP, is then fitted
by binary cross-entropy with Adam. The prompts are split in two: the filter learns from the traces of the first
part and is scored on the other (accuracy, and at the rule's default threshold, how many positions it would
commit and how many of those are truly final). A run takes a minute or two on a CPU, so it is not resumable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from stretto import checkpoints
from stretto.data import text_tasks
from stretto.models.text_lm import TextLM
from stretto.models.unmask_filter import UnmaskFilter, UnmaskFilterConfig
from stretto.pipelines.text import make_canvas
from stretto.pipelines.text.caches import NoCache
from stretto.pipelines.text.decode import decode
from stretto.pipelines.text.learned import FEATURES, position_features
from stretto.pipelines.text.rules import LowConfidence


@dataclass
class FilterTrainConfig:
    out: str = "runs/text-masked-filter"
    model: str = "text-masked"  # the text model whose traces the filter learns
    prompts: int = 96  # train-split prompts decoded for traces
    holdout: float = 0.25  # share of those prompts whose traces only score the filter
    batch_size: int = 16  # prompts decoded together while tracing
    gen_length: int = 64
    block_length: int = 16
    steps: int = 1500  # optimizer steps
    lr: float = 3e-3
    hidden: int = 32
    seed: int = 7  # of the trace prompts (train split) and the filter's weights
    tau: float = 0.9  # the threshold the held-out report uses (the rule's default)

    def __post_init__(self):
        for name in ("prompts", "batch_size", "gen_length", "block_length", "steps", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")
        if not 0 < self.lr <= 1:
            raise ValueError(f"lr must be in (0, 1], got {self.lr}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")


@dataclass
class Traces:
    """Samples of decoding traces: features (N, F), labels (N,) bool, and the prompt index of each sample."""

    features: torch.Tensor
    labels: torch.Tensor
    prompt: torch.Tensor
    prompts: list[str]


def trace_examples(seed: int, n: int) -> list[text_tasks.Example]:
    """n train-split examples (the tasks take turns), the prompts traces are collected on."""
    return [text_tasks.make_example(seed, i, "train") for i in range(n)]


class _Recorder(LowConfidence):
    """The baseline rule, keeping each step's features and argmax of the block's open positions."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.eot_id, self.pending = 0, None

    def choose(self, conf, step, probs, x0):
        self.pending = (position_features(conf, step, probs, x0, self.eot_id), x0, torch.isfinite(conf))
        return super().choose(conf, step, probs, x0)


@torch.no_grad()
def collect_traces(
    model: TextLM, prompts: list[str], gen_length: int = 64, block_length: int = 16, batch_size: int = 16
) -> Traces:
    """Decode the prompts with the baseline decoder; one sample per masked block position per step."""
    held_out = [p for p in prompts if text_tasks.is_test(p)]
    if held_out:
        raise ValueError(f"trace prompts must come from the train split; {held_out[0]!r} is a held-out prompt")
    feats, labels, index = [], [], []
    for first in range(0, len(prompts), batch_size):
        batch = prompts[first : first + batch_size]
        canvas, gen_start = make_canvas(model, batch, gen_length)
        rule = _Recorder(tokens=1)
        rule.eot_id = model.config.eot_id
        seen = []  # (features, argmax, row, slot) of every open position, step by step

        def record(canvas, info, rule=rule, seen=seen):
            f, x0, open_ = rule.pending
            rows, cols = open_.nonzero(as_tuple=True)
            seen.append((f[rows, cols], x0[rows, cols], rows, cols + info["block"][0]))

        decode(model, canvas, gen_start, block_length, rule, NoCache(), callback=record)
        for f, x0, rows, slots in seen:  # the label: is the argmax then the token the row ends up with?
            feats.append(f)
            labels.append(x0 == canvas[rows, slots])
            index.append(rows + first)
    return Traces(torch.cat(feats), torch.cat(labels), torch.cat(index), list(prompts))


def fit_filter(
    traces: Traces, steps: int, lr: float = 3e-3, hidden: int = 32, seed: int = 0, eot_id: int = 2, batch: int = 4096
) -> tuple[UnmaskFilter, list[float]]:
    """Fit the filter by binary cross-entropy (Adam); returns it and the loss at every step."""
    torch.manual_seed(seed)
    net = UnmaskFilter(UnmaskFilterConfig(n_features=len(FEATURES), hidden=hidden, eot_id=eot_id))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    x, y = traces.features, traces.labels.float()
    losses = []
    for _ in range(steps):
        pick = torch.randint(0, len(y), (min(batch, len(y)),), generator=gen)
        loss = F.binary_cross_entropy_with_logits(net(x[pick]), y[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return net.eval(), losses


@torch.no_grad()
def score_filter(net: UnmaskFilter, traces: Traces, tau: float) -> dict[str, float]:
    """On traces it did not learn from: accuracy at 0.5; at tau, the share rated final and how many truly are."""
    p = torch.sigmoid(net(traces.features))
    y = traces.labels
    accept = p >= tau
    return {
        "samples": len(y),
        "final_share": float(y.float().mean()),
        "accuracy": float(((p >= 0.5) == y).float().mean()),
        "accepted_share": float(accept.float().mean()),
        "precision_at_tau": float(y[accept].float().mean()) if accept.any() else float("nan"),
    }


def split(traces: Traces, holdout: float) -> tuple[Traces, Traces]:
    """By prompt: the first (1 - holdout) of the prompts to learn from, the rest to score on."""
    cut = round(len(traces.prompts) * (1 - holdout))
    learn = traces.prompt < cut

    def part(keep: torch.Tensor, prompts: list[str]) -> Traces:
        return Traces(traces.features[keep], traces.labels[keep], traces.prompt[keep], prompts)

    return part(learn, traces.prompts[:cut]), part(~learn, traces.prompts[cut:])


def train_command(cfg: FilterTrainConfig) -> str:
    return (
        f"stretto train unmask-filter --model {cfg.model} --prompts {cfg.prompts} --holdout {cfg.holdout:g} "
        f"--steps {cfg.steps} --lr {cfg.lr:g} --hidden {cfg.hidden} --seed {cfg.seed} --out {cfg.out}"
    )


def train_unmask_filter(cfg: FilterTrainConfig) -> Path:
    """Collect traces, fit the filter, score it on the held-back prompts' traces, export safetensors + JSON."""
    model = checkpoints.load(cfg.model, kind=("masked-lm", "block-lm"))
    t0 = time.perf_counter()
    prompts = [e.prompt for e in trace_examples(cfg.seed, cfg.prompts)]
    traces = collect_traces(model, prompts, cfg.gen_length, cfg.block_length, cfg.batch_size)
    learn, held = split(traces, cfg.holdout)
    seconds = time.perf_counter() - t0
    print(f"{len(traces.labels)} trace samples from {cfg.prompts} train-split prompts in {seconds:.0f} s")
    net, losses = fit_filter(learn, cfg.steps, cfg.lr, cfg.hidden, cfg.seed, model.config.eot_id)
    report = score_filter(net, held, cfg.tau) if len(held.labels) else {}
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; held-back prompts: {report}")
    return checkpoints.save(
        net,
        cfg.out,
        features=list(FEATURES),
        trained_on=cfg.model,
        trace_samples=len(learn.labels),
        loss_first=losses[0],
        loss_last=losses[-1],
        held_back=report,
        train_command=train_command(cfg),
    )
