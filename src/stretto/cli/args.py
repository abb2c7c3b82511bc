"""The arguments several commands share, each defined once: model, device, sampling settings, cache, seed, outputs."""

from __future__ import annotations

import argparse

from stretto.pipelines.image import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_SHIFT, MAX_GUIDANCE

# Benchmarks, calibrations and searches write here unless given paths; the committed results in
# benchmarks/results/ change only when a command names them.
RESULTS_DIR = "stretto-results"
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit integer
MAX_TRAIN_SEED = 2**32 - 1  # training seeds generators with seed * 1_000_003 + step, which must stay in 64 bits


class IntInRange(argparse.Action):
    """Store an integer flag; outside [low, high] a ValueError naming the flag (main prints it as one line)."""

    def __init__(self, option_strings, dest, low: int = 0, high: int = MAX_SEED, **kwargs):
        super().__init__(option_strings, dest, type=int, **kwargs)
        self.low, self.high = low, high

    def __call__(self, parser, namespace, value, option_string=None):
        if not self.low <= value <= self.high:
            raise ValueError(f"{option_string} must be an integer in [{self.low}, {self.high}], got {value}")
        setattr(namespace, self.dest, value)


def add_model(p: argparse.ArgumentParser, default: str = "shapes-flux", what: str = "text-to-image model") -> None:
    """--model: a shipped name or a checkpoint folder."""
    p.add_argument("--model", default=default, help=f"{what}: shipped name or checkpoint folder (default {default})")


def add_device(p: argparse.ArgumentParser) -> None:
    """--device."""
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")


def add_image_sampling(
    p: argparse.ArgumentParser,
    steps: int,
    sampler: str = DEFAULT_SAMPLER,
    guidance: float = DEFAULT_GUIDANCE,
    min_steps: int = 1,
    model_defaults: bool = False,
) -> None:
    """--steps, --sampler and --guidance of the text-to-image commands.

    With `model_defaults`, they default to None: the pipeline then uses the given defaults for a teacher and a
    distilled student's own (its method, step count and baked-in guidance).
    """
    from stretto.sampling import SAMPLERS

    student = " (a distilled student: its own)" if model_defaults else ""
    p.add_argument(
        "--steps", type=int, default=None if model_defaults else steps,
        help=f"sampler steps, >= {min_steps} (default {steps}{student})",
    )  # fmt: skip
    p.add_argument(
        "--sampler", default=None if model_defaults else sampler,
        help=f"one of {', '.join(SAMPLERS)} (default {sampler}{student})",
    )  # fmt: skip
    add_guidance(p, None if model_defaults else guidance, shown=guidance, extra=student)


def add_guidance(
    p: argparse.ArgumentParser, default: float | None = DEFAULT_GUIDANCE, shown: float | None = None, extra: str = ""
) -> None:
    """--guidance: the classifier-free guidance scale (`shown`: the default to print when `default` is None)."""
    shown = default if shown is None else shown
    p.add_argument(
        "--guidance",
        type=float,
        default=default,
        help=f"classifier-free guidance scale in [0, {MAX_GUIDANCE:g}] (default {shown:g}{extra}; 1: conditional only)",
    )


def add_shift(p: argparse.ArgumentParser, default: float = DEFAULT_SHIFT) -> None:
    """--shift: the SD3/Flux timestep shift."""
    p.add_argument(
        "--shift",
        type=float,
        default=default,
        help=f"SD3/Flux timestep shift in (0, 100], 1 = none (default {default:g})",
    )


def add_image_cache(p: argparse.ArgumentParser) -> None:
    """--cache: a feature-cache spec for the text-to-image model."""
    p.add_argument(
        "--cache",
        default=None,
        help='feature cache, e.g. "taylor", "fora:interval=3", "dbcache:first=1,threshold=0.1" '
        "(stretto.cache.available() lists all policies and parameters; default none)",
    )


def add_seed(p: argparse.ArgumentParser, what: str, default: int = 0, high: int = MAX_SEED) -> None:
    """--seed, checked against [0, high] as it is parsed."""
    p.add_argument("--seed", action=IntInRange, low=0, high=high, default=default,
                   help=f"{what}, in [0, {high}] (default {default})")  # fmt: skip


def add_results(p: argparse.ArgumentParser, name: str, plot: bool = True) -> None:
    """--json (and --plot): where a benchmark, calibration or search writes; stretto-results/ unless given."""
    p.add_argument(
        "--json",
        default=f"{RESULTS_DIR}/{name}.json",
        help=f"result JSON (default {RESULTS_DIR}/{name}.json; the committed results are in benchmarks/results/)",
    )
    if plot:
        p.add_argument(
            "--plot",
            default=f"{RESULTS_DIR}/{name}.png",
            help=f"plot PNG, '' for none (default {RESULTS_DIR}/{name}.png)",
        )


def add_stream_settings(p: argparse.ArgumentParser) -> None:
    """The world stream's settings: denoising steps per block, rolling window, sinks, KV memory budget, context
    noise."""
    from stretto.pipelines.world import DEFAULT_KV_BUDGET_MIB, DEFAULT_SINKS, DEFAULT_STEPS, DEFAULT_WINDOW

    p.add_argument(
        "--steps", type=int, default=None,
        help=f"denoising steps per block (default: the model's own; {DEFAULT_STEPS} unless it was distilled for fewer)",
    )  # fmt: skip
    p.add_argument(
        "--window", type=int, default=DEFAULT_WINDOW, help=f"frames kept besides the sinks (default {DEFAULT_WINDOW})"
    )
    p.add_argument(
        "--sinks", type=int, default=DEFAULT_SINKS, help=f"sink frames never evicted (default {DEFAULT_SINKS})"
    )
    p.add_argument(
        "--kv-budget-mib",
        type=float,
        default=DEFAULT_KV_BUDGET_MIB,
        help=f"most KV cache memory to allocate, MiB (default {DEFAULT_KV_BUDGET_MIB:g}); larger asks fail up front",
    )
    p.add_argument("--context-noise", type=float, default=0.0, metavar="LEVEL",
                   help="commit finished blocks re-noised to this level in [0, 1) (Self Forcing's context_noise; "
                   "SkyReels-V2's addnoise_condition 20 is 0.02) (default 0: clean)")  # fmt: skip


def cache_note(args: argparse.Namespace) -> str:
    """', cache POLICY' for a command's summary line when it ran a feature cache (--cache), else ''."""
    return f", cache {args.cache}" if getattr(args, "cache", None) else ""
