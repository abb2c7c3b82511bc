"""`stretto text`: complete prompts with a masked diffusion LM (parallel decoding, KV cache)."""

from __future__ import annotations

import argparse
import sys

from stretto.cli import args as shared

DEFAULT_TEXT_MODEL = "text-llada"
TEXT_KINDS = ("masked-lm", "block-lm")


def cmd_text(args: argparse.Namespace) -> None:
    from stretto import checkpoints
    from stretto.pipelines.text import DEFAULT_GEN_LENGTH, generate

    model = checkpoints.load(args.model, device=args.device, kind=TEXT_KINDS)
    gen_length = args.gen_length or checkpoints.trained_gen_length(args.model) or DEFAULT_GEN_LENGTH
    callback = None
    if args.show:
        tty = sys.stdout.isatty()

        def callback(canvas, info):
            gen = canvas[:, -gen_length:]
            lines = [model.tokenizer.decode(row, stop_at_eot=False) for row in gen]
            head = f"step {info['step']:>3} nfe {info['nfe']:>3} "
            if tty and len(lines) == 1:
                print("\r" + head + lines[0], end="", flush=True)
            else:
                print(head + " / ".join(lines), flush=True)

    res = generate(
        model,
        args.prompts,
        gen_length=gen_length,
        block_length=args.block_length,
        decode=args.decode,
        cache=args.cache,
        early_stop=not args.no_early_stop,
        callback=callback,
        batch_size=args.batch_size,
        sparse=args.sparse,
    )
    if args.show and sys.stdout.isatty() and len(args.prompts) == 1:
        print()
    for prompt, out in zip(args.prompts, res.texts, strict=True):
        print(f"{prompt}{out}")
    s = res.stats
    print(
        f"{res.tokens} tokens in {res.seconds:.3f} s: {res.tokens_per_s:.1f} tokens/s; "
        f"nfe {s.nfe}, steps {s.steps}, "
        f"positions {s.positions}, refreshes {s.refreshes}, cache {s.cache_bytes / 1024:.0f} KiB"
        + (f", attention {s.attention:.2f} of the query-key pairs" if s.attention < 1 else ""),
        file=sys.stderr,
    )


def add_text_command(subparsers) -> argparse.ArgumentParser:
    """`stretto text PROMPT...`."""
    p = subparsers.add_parser("text", help="complete text with a masked diffusion LM (parallel decoding, KV cache)")
    p.add_argument(
        "prompts", nargs="+",
        help='e.g. "123+456=" or "rev:stretto=" (tasks: copy, rev, sort, dup, cum; long: down, up, hex, oct, bin, '
        "let, skip, exp, rep)",
    )  # fmt: skip
    shared.add_model(
        p,
        DEFAULT_TEXT_MODEL,
        what="diffusion LM (text-llada, text-masked, text-block; or a LLaDA/Dream/Fast-dLLM v2/SDAR folder)",
    )
    p.add_argument("--gen-length", type=int, default=None, help="tokens to generate, a multiple of --block-length "
                   "(default: the canvas the model was trained on, else 64)")  # fmt: skip
    p.add_argument("--block-length", type=int, default=None, help="default: the model's block, or 16")
    p.add_argument(
        "--decode",
        default="threshold:tau=0.9",
        help="lowconf:tokens=K (LLaDA baseline; lowconf:tokens=K,tau=T: LLaDA 2.0's rule) | threshold:tau=T | "
        "factor:f=F | learned:tau=T[,eot] (Learn2PD's learned filter; eot: stop at a committed end-of-text) "
        "(default threshold:tau=0.9)",
    )
    p.add_argument(
        "--cache",
        default=None,
        help="none | prefix | dual | block, with options e.g. dual:every=4, dual:drift=0.05,layer=1, "
        "dual:delay "
        "(default: block for a block-lm, dual for a masked-lm)",
    )
    p.add_argument(
        "--sparse",
        default="none",
        help="none | sparsed:keep=K[,dense=N,qblock=Q,per_block]: SparseD's head-specific sparse attention, keys "
        "selected after N dense steps and reused (a mask here: it counts the pairs it would save, it does not "
        "run faster on a CPU) (default none)",
    )
    p.add_argument("--show", action="store_true", help="print the canvas after every step")
    p.add_argument("--batch-size", type=int, default=None, help="continuous batching: this many prompts at a "
                   "time, a finished one leaving for the next (default: all prompts in one static batch)")  # fmt: skip
    p.add_argument("--no-early-stop", action="store_true", help="decode every block even after end-of-text")
    shared.add_device(p)
    p.set_defaults(func=cmd_text)
    return p
