"""The text commands of the CLI: `stretto text`, `stretto train text`, `stretto bench text`.

cli.py calls `add_text_command(subparsers)`, `add_train_text_command(train_subparsers)` and
`add_bench_text_command(bench_subparsers)`; each handler takes the argparse namespace and raises ValueError
on bad input (cli.py prints it as an error).
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_TEXT_MODEL = "text-masked"


def cmd_text(args: argparse.Namespace) -> None:
    from stretto import checkpoints
    from stretto.data.text_tasks import TOKENIZER
    from stretto.pipelines.text import generate

    model = checkpoints.load(args.model, device=getattr(args, "device", "cpu"))
    if model.kind not in ("masked-lm", "block-lm"):
        raise ValueError(f"--model {args.model!r} is a {model.kind!r}, not a text model (masked-lm or block-lm)")
    callback = None
    if args.show:
        tty = sys.stdout.isatty()

        def callback(canvas, info):
            gen = canvas[:, -args.gen_length :]
            lines = [TOKENIZER.decode(row, stop_at_eot=False) for row in gen]
            head = f"step {info['step']:>3} nfe {info['nfe']:>3} "
            if tty and len(lines) == 1:
                print("\r" + head + lines[0], end="", flush=True)
            else:
                print(head + " / ".join(lines), flush=True)

    res = generate(
        model,
        args.prompts,
        gen_length=args.gen_length,
        block_length=args.block_length,
        decode=args.decode,
        cache=args.cache,
        early_stop=not args.no_early_stop,
        callback=callback,
    )
    if args.show and sys.stdout.isatty() and len(args.prompts) == 1:
        print()
    for prompt, out in zip(args.prompts, res.texts, strict=True):
        print(f"{prompt}{out}")
    s = res.stats
    print(
        f"{res.tokens} tokens in {res.seconds:.3f} s: {res.tokens_per_s:.1f} tokens/s; "
        f"nfe {s.nfe}, steps {s.steps}, "
        f"positions {s.positions}, refreshes {s.refreshes}, cache {s.cache_bytes / 1024:.0f} KiB",
        file=sys.stderr,
    )


def add_text_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("text", help="complete text with a masked diffusion LM (parallel decoding, KV cache)")
    p.add_argument("prompts", nargs="+", help='e.g. "123+456=" or "rev:stretto=" (tasks: copy, rev, sort, dup, cum)')
    p.add_argument("--model", default=DEFAULT_TEXT_MODEL, help="shipped name or checkpoint folder")
    p.add_argument("--gen-length", type=int, default=64, help="tokens to generate (a multiple of --block-length)")
    p.add_argument("--block-length", type=int, default=None, help="default: the model's block, or 16")
    p.add_argument(
        "--decode",
        default="threshold:tau=0.9",
        help="lowconf:tokens=K (LLaDA baseline) | threshold:tau=T | factor:f=F",
    )
    p.add_argument(
        "--cache",
        default=None,
        help="none | prefix | dual | block, with options e.g. dual:every=4, dual:drift=0.05,layer=1, "
        "dual:delay "
        "(default: block for a block-lm, dual for a masked-lm)",
    )
    p.add_argument("--show", action="store_true", help="print the canvas after every step")
    p.add_argument("--no-early-stop", action="store_true", help="decode every block even after end-of-text")
    p.set_defaults(func=cmd_text)
    return p


def cmd_train_text(args: argparse.Namespace) -> None:
    from stretto.train.text import TextTrainConfig, train_text

    cfg = TextTrainConfig(
        out=args.out or f"runs/text-{args.model}",
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        n_layer=args.n_layer,
        n_embd=args.n_embd,
        block_size=args.block_size,
        tasks=args.tasks,
        save_every=args.save_every,
        eval_every=args.eval_every,
        semi_ar=args.semi_ar,
    )
    print(f"exported {train_text(cfg)}")


def add_train_text_command(train_subparsers) -> argparse.ArgumentParser:
    p = train_subparsers.add_parser(
        "text", help="a masked (LLaDA) or block (BD3-LM) diffusion LM on the text tasks (resumes from --out)"
    )
    p.add_argument("--model", choices=("masked", "block"), default="masked")
    p.add_argument("--out", default=None, help="default runs/text-<model>")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--block-size", type=int, default=16, help="block-lm only")
    p.add_argument("--tasks", default="all", help="comma-separated: copy,reverse,sort,duplicate,running_sum,add")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument(
        "--semi-ar", type=float, default=0.5, help="masked only: fraction of block-decoding-shaped masks (0: LLaDA)"
    )
    p.add_argument("--eval-every", type=int, default=500, help="held-out exact match every N steps (0: at the end)")
    p.set_defaults(func=cmd_train_text)
    return p


def cmd_bench_text(args: argparse.Namespace) -> None:
    from stretto.bench.text import run_text_bench

    run_text_bench(
        json_path=args.json,
        plot_path=args.plot,
        models=args.models.split(","),
        n_per_task=args.n_per_task,
        batch_size=args.batch_size,
        gen_length=args.gen_length,
        device=getattr(args, "device", "cpu"),
    )


def add_bench_text_command(bench_subparsers) -> argparse.ArgumentParser:
    p = bench_subparsers.add_parser("text", help="every decoding rule x cache on the held-out text tasks")
    p.add_argument("--json", default="benchmarks/results/text.json")
    p.add_argument("--plot", default="benchmarks/results/text.png")
    p.add_argument("--models", default="text-masked,text-block", help="comma-separated names or folders")
    p.add_argument("--n-per-task", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--gen-length", type=int, default=64)
    p.set_defaults(func=cmd_bench_text)
    return p
