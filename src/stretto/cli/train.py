"""`stretto train image|classifier|text|unmask-filter|world`: the training runs behind the shipped checkpoints."""

from __future__ import annotations

import argparse

from stretto.cli import args as shared


def cmd_train_image(args: argparse.Namespace) -> None:
    from stretto.train.image import ImageTrainConfig, train_image

    cfg = ImageTrainConfig(
        out=args.out or f"runs/shapes-{args.arch}", steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed,
        text_encoder=args.text_encoder, text_width=args.text_width, text_layers=args.text_layers,
        init_from=args.init_from, warmup=args.warmup, pair_fraction=args.pair_fraction,
        double_blocks=args.double_blocks, single_blocks=args.single_blocks, arch=args.arch,
    )  # fmt: skip
    print(f"exported {train_image(cfg)}")


def cmd_train_classifier(args: argparse.Namespace) -> None:
    from stretto import checkpoints
    from stretto.train.classifier import heldout_accuracy, train_classifier

    folder = train_classifier(args.out, steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    print(f"exported {folder}")
    model = checkpoints.load(folder, kind="shapes-classifier")
    for noise in (0.0, 0.05, 0.1):
        print(f"held-out exact-scene accuracy, noise {noise}: {heldout_accuracy(model, noise=noise):.4f}")


def cmd_train_text(args: argparse.Namespace) -> None:
    from stretto.train.text import TextTrainConfig, train_text
    from stretto.train.text_published import LAYOUT_MODEL

    model = args.model or LAYOUT_MODEL.get(args.layout, "masked")
    default_out = f"runs/text-{model}" if args.layout == "stretto" else f"runs/text-{args.layout}"
    cfg = TextTrainConfig(
        out=args.out or default_out,
        model=model,
        layout=args.layout,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        block_size=args.block_size,
        gen_length=args.gen_length,
        tasks=args.tasks,
        save_every=args.save_every,
        eval_every=args.eval_every,
        eval_per_task=args.eval_per_task,
        eval_decode=args.eval_decode,
        eval_cache=args.eval_cache,
        semi_ar=args.semi_ar,
    )
    print(f"exported {train_text(cfg)}")


def cmd_train_unmask_filter(args: argparse.Namespace) -> None:
    from stretto.train.unmask_filter import FilterTrainConfig, train_unmask_filter

    cfg = FilterTrainConfig(
        out=args.out, model=args.model, prompts=args.prompts, holdout=args.holdout, batch_size=args.batch_size,
        steps=args.steps, lr=args.lr, hidden=args.hidden, seed=args.seed,
    )  # fmt: skip
    print(f"exported {train_unmask_filter(cfg)}")


def cmd_train_world(args: argparse.Namespace) -> None:
    from stretto.train.world import WorldTrainConfig, train_world

    out = args.out or {"teacher-forcing": "runs/world-tf", "self-forcing": "runs/world-sf"}.get(
        args.mode, "runs/world-score"
    )
    cfg = WorldTrainConfig(
        out=out, mode=args.mode, init=args.init, steps=args.steps, batch_size=args.batch_size, frames=args.frames,
        lr=args.lr, seed=args.seed, frames_per_block=args.frames_per_block, context_noise=args.context_noise,
        window=args.window, sinks=args.sinks, save_every=args.save_every, tf_weight=args.tf_weight,
        denoise_steps=args.denoise_steps,
    )  # fmt: skip
    print(f"exported {train_world(cfg)}")


def _add_run_args(p: argparse.ArgumentParser, out: str | None, steps: int, batch_size: int, out_text: str = "") -> None:
    """--out, --steps, --batch-size and --seed, which every training run takes."""
    p.add_argument("--out", default=out, help=f"checkpoint folder; a run there is resumed (default {out_text or out})")
    p.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"examples per step (default {batch_size})")
    shared.add_seed(p, "seed of the initial weights and the batches", high=shared.MAX_TRAIN_SEED)


def add_train_image_command(train_subparsers) -> argparse.ArgumentParser:
    """`stretto train image`."""
    p = train_subparsers.add_parser("image", help="the text-to-image flow-matching Flux or UNet (resumes from --out)")
    _add_run_args(p, None, steps=10000, batch_size=64, out_text="runs/shapes-flux or runs/shapes-unet, by --arch")
    p.add_argument(
        "--arch", choices=["flux", "unet"], default="flux",
        help="flux: FluxTransformer2DModel (shapes-flux, default); unet: UNet2DConditionModel (shapes-unet)",
    )  # fmt: skip
    p.add_argument("--lr", type=float, default=6e-4, help="peak learning rate (default 6e-4)")
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps of the learning rate (default 200)")
    p.add_argument(
        "--text-encoder", choices=["words", "t5"], default="words",
        help="prompt encoder: the shipped model's word encoder (default) or transformers' T5EncoderModel from config",
    )  # fmt: skip
    p.add_argument("--text-width", type=int, default=64, help="prompt encoder width (default 64)")
    p.add_argument("--text-layers", type=int, default=1, help="prompt encoder layers (default 1)")
    p.add_argument("--double-blocks", type=int, default=2, help="Flux double-stream (joint) blocks (default 2)")
    p.add_argument("--single-blocks", type=int, default=4, help="Flux single-stream blocks (default 4)")
    p.add_argument(
        "--pair-fraction", type=float, default=0.5,
        help="share of two-object scenes in the training data, in [0, 1] (default 0.5)",
    )  # fmt: skip
    p.add_argument(
        "--init-from", default=None,
        help="start from a shapes-flux checkpoint's same-shaped tensors (e.g. the shipped one); default: scratch",
    )  # fmt: skip
    p.set_defaults(func=cmd_train_image)
    return p


def add_train_classifier_command(train_subparsers) -> argparse.ArgumentParser:
    """`stretto train classifier`."""
    p = train_subparsers.add_parser("classifier", help="the evaluation classifier (prompt accuracy and FID features)")
    _add_run_args(p, "runs/shapes-classifier", steps=1600, batch_size=128)
    p.set_defaults(func=cmd_train_classifier)
    return p


def add_train_text_command(train_subparsers) -> argparse.ArgumentParser:
    """`stretto train text`."""
    from stretto.data.text_tasks import LONG_TASKS, TASKS

    p = train_subparsers.add_parser(
        "text", help="a masked (LLaDA) or block (BD3-LM) diffusion LM on the text tasks (resumes from --out)"
    )
    p.add_argument(
        "--model", choices=("masked", "block"), default=None,
        help="which LM: masked (bidirectional) or block (block diffusion) (default: masked; block for --layout sdar)",
    )  # fmt: skip
    p.add_argument(
        "--layout", choices=("stretto", "llada", "sdar"), default="stretto",
        help="stretto: stretto's own TextLM (default); llada: transformers' LlamaForCausalLM, masked, exported as "
        "LLaDA publishes (OLMo names, shards, tokenizer.json); sdar: Qwen3ForCausalLM, block, exported as SDAR",
    )  # fmt: skip
    _add_run_args(p, None, steps=5000, batch_size=32, out_text="runs/text-<model>, or runs/text-<layout>")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--n-layer", type=int, default=4, help="transformer layers (default 4)")
    p.add_argument("--n-head", type=int, default=4, help="attention heads (default 4)")
    p.add_argument("--n-embd", type=int, default=128, help="model width (default 128)")
    p.add_argument("--block-size", type=int, default=16, help="block-lm only: tokens per block (default 16)")
    p.add_argument(
        "--gen-length", type=int, default=0,
        help="answer canvas in tokens (default: 64, or 256 when a long task is trained)",
    )  # fmt: skip
    p.add_argument(
        "--tasks", default="all",
        help=f"all (the short tasks: {','.join(TASKS)}), long (answers of 128-255 characters: "
        f"{','.join(LONG_TASKS)}), or comma-separated names (default all)",
    )  # fmt: skip
    p.add_argument("--save-every", type=int, default=250, help="checkpoint every N steps (default 250)")
    p.add_argument(
        "--semi-ar", type=float, default=0.5, help="masked only: fraction of block-decoding-shaped masks (0: LLaDA)"
    )
    p.add_argument("--eval-every", type=int, default=500, help="held-out exact match every N steps (0: at the end)")
    p.add_argument("--eval-per-task", type=int, default=4, help="held-out examples per task of that eval (default 4)")
    p.add_argument(
        "--eval-decode", default="threshold:tau=0.9",
        help="decoding rule of that eval (default threshold:tau=0.9; lowconf:tokens=1 is LLaDA's baseline)",
    )  # fmt: skip
    p.add_argument("--eval-cache", default=None, help="cache of that eval (default: dual for masked, block for block)")
    p.set_defaults(func=cmd_train_text)
    return p


def add_train_unmask_filter_command(train_subparsers) -> argparse.ArgumentParser:
    """`stretto train unmask-filter`."""
    p = train_subparsers.add_parser(
        "unmask-filter",
        help="Learn2PD's filter for `--decode learned`: traces of the baseline decoder on train-split prompts, "
        "then a tiny MLP (a minute or two; not resumable)",
    )
    p.add_argument("--model", default="text-masked", help="text model whose traces it learns (default text-masked)")
    p.add_argument("--out", default="runs/text-masked-filter", help="checkpoint folder (default %(default)s)")
    p.add_argument("--prompts", type=int, default=96, help="train-split prompts decoded for traces (default 96)")
    p.add_argument(
        "--holdout",
        type=float,
        default=0.25,
        help="share of the prompts whose traces only score the filter, in [0, 1) (default 0.25)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="prompts decoded together while tracing (default 16)")
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps (default 1500)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    p.add_argument("--hidden", type=int, default=32, help="width of the filter's two hidden layers (default 32)")
    shared.add_seed(p, "seed of the trace prompts and the filter's weights", default=7, high=shared.MAX_TRAIN_SEED)
    p.set_defaults(func=cmd_train_unmask_filter)
    return p


def add_train_world_command(train_subparsers) -> argparse.ArgumentParser:
    """`stretto train world`."""
    from stretto.pipelines.world import DEFAULT_SINKS, DEFAULT_WINDOW

    p = train_subparsers.add_parser(
        "world", help="the action-conditioned world model: teacher forcing, then Self Forcing (resumes from --out)"
    )
    modes = ("teacher-forcing", "self-forcing", "clip-score")
    p.add_argument("--mode", choices=modes, default="teacher-forcing",
                   help="training objective: teacher forcing (clean context), Self Forcing against the "
                   "simulator (MSE), "
                   "or clip-score (whole clips noised at one level: the scores of distill self-forcing) "
                   "(default teacher-forcing)")  # fmt: skip
    p.add_argument(
        "--init",
        default=None,
        help="checkpoint to start from: required by self-forcing (the teacher-forced model); teacher forcing continues",
    )
    _add_run_args(
        p, None, steps=3000, batch_size=12, out_text="runs/world-tf, runs/world-sf or runs/world-score, by --mode"
    )
    p.add_argument("--frames", type=int, default=10, help="clip length (teacher forcing) / rollout length (self)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--frames-per-block", type=int, default=1, help="frames denoised together (default 1)")
    p.add_argument("--context-noise", type=float, default=0.0, help="teacher forcing: max noise of the context")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="self forcing: rolling cache window")
    p.add_argument("--sinks", type=int, default=DEFAULT_SINKS, help="self forcing: sink frames")
    p.add_argument("--tf-weight", type=float, default=0.0, help="self forcing: + this x teacher-forcing loss")
    p.add_argument("--denoise-steps", type=int, default=4,
                   help="self forcing: denoising steps per frame of the rollout; the model then streams with them "
                   "by default (default 4)")  # fmt: skip
    p.add_argument("--save-every", type=int, default=250, help="checkpoint every N steps (default 250)")
    p.set_defaults(func=cmd_train_world)
    return p


def add_train_commands(subparsers) -> argparse.ArgumentParser:
    """`stretto train ...`, one subcommand per shipped model family."""
    train = subparsers.add_parser("train", help="train a shipped model")
    what = train.add_subparsers(dest="what", required=True)
    add_train_image_command(what)
    add_train_classifier_command(what)
    add_train_text_command(what)
    add_train_unmask_filter_command(what)
    add_train_world_command(what)
    return train
