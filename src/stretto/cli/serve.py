"""`stretto serve`: the pipelines over HTTP / WebSocket (FastAPI on uvicorn), with a web page at `/`."""

from __future__ import annotations

import argparse

from stretto.cli import args as shared
from stretto.serve.settings import DEFAULT_MODELS  # plain constants: no torch import

# ServeSettings' field -> the flag that sets it, for error messages
FLAGS = {"timeout_s": "--timeout", "idle_s": "--idle-timeout", "max_body_bytes": "--max-body-kib"}


def cmd_serve(args: argparse.Namespace) -> None:
    from stretto import checkpoints

    try:
        from stretto.serve.server import run
        from stretto.serve.settings import ServeSettings, usable_cores
    except ImportError as err:
        raise ValueError(f"stretto serve needs the serve extra: pip install 'stretto[serve]' ({err})") from None

    settings = ServeSettings(
        host=args.host,
        port=args.port,
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        device=str(args.device),
        queue_size=args.queue_size,
        max_batch=args.max_batch,
        batch_window_ms=args.batch_window_ms,
        timeout_s=args.timeout,
        max_body_bytes=args.max_body_kib * 1024,
        allow_model_dirs=tuple(args.allow_model_dir),
        torch_threads=args.torch_threads or usable_cores(),
        max_streams=args.max_streams,
        idle_s=args.idle_timeout,
        max_images=args.max_images,
        max_steps=args.max_steps,
        quality=not args.no_quality,
    )
    try:
        settings.check()  # a bad flag is one line before anything loads
    except ValueError as err:
        field = str(err).split()[0]
        raise ValueError(f"{FLAGS.get(field, '--' + field.replace('_', '-'))}: {err}") from None
    for name in settings.models:
        checkpoints.resolve(name)  # a missing model is one line here, not a failed server start
    if args.ray:
        return serve_on_ray(settings, args, threads_given=args.torch_threads is not None)
    print(f"stretto serve: http://{args.host}:{args.port}/ (models {', '.join(settings.models)})", flush=True)
    run(settings, log_level=args.log_level)


def serve_on_ray(settings, args: argparse.Namespace, threads_given: bool) -> None:
    """The same app as a Ray Serve deployment of --replicas replicas (autoscaled within the bounds)."""
    try:
        from stretto.serve.replicas import ReplicaSettings, run
    except ImportError as err:
        raise ValueError(f"--ray needs Ray Serve: pip install 'stretto[ray]' ({err})") from None
    replicas = ReplicaSettings(args.replicas, args.min_replicas, args.max_replicas, replica_cpus=args.replica_cpus)
    try:
        replicas.check()
    except ValueError as err:
        raise ValueError(f"--{str(err).split()[0].replace('_', '-')}: {err}") from None
    if not threads_given:  # replicas share the cores: each gets the CPUs Ray reserves for it
        settings.torch_threads = max(1, int(args.replica_cpus))
    low, high = replicas.bounds
    print(f"stretto serve on Ray Serve: http://{args.host}:{args.port}/ ({args.replicas} replicas, bounds "
          f"[{low}, {high}]; models {', '.join(settings.models)})", flush=True)  # fmt: skip
    run(settings, replicas)


def add_serve_command(subparsers) -> argparse.ArgumentParser:
    """`stretto serve`."""
    from stretto.serve.settings import usable_cores

    p = subparsers.add_parser("serve", help="serve images, text and world streams over HTTP/WebSocket, with a page")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", action=shared.IntInRange, low=0, high=65535, default=8000, help="port (default 8000)")
    p.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="comma-separated models to load at start: shipped names or checkpoint folders; requests may name "
        "only these (default %(default)s)",
    )
    p.add_argument(
        "--allow-model-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder whose checkpoints clients may name as `model` (loaded on first use); repeatable; "
        "default none: clients cannot name paths",
    )
    p.add_argument("--queue-size", action=shared.IntInRange, low=1, high=100_000, default=32,
                   help="requests waiting for the model at most; one more is answered 429 (default 32)")  # fmt: skip
    p.add_argument("--max-batch", action=shared.IntInRange, low=1, high=4096, default=16,
                   help="images in one batched generation at most (default 16)")  # fmt: skip
    p.add_argument("--batch-window-ms", type=float, default=10.0,
                   help="ms a waiting image request waits for others to join its batch (default 10)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds a request may take; later it is cancelled and answered 504 (default 60)")  # fmt: skip
    p.add_argument("--max-body-kib", action=shared.IntInRange, low=1, high=1024 * 1024, default=1024,
                   help="largest request body and WebSocket message, KiB; larger is 413 (default 1024)")  # fmt: skip
    p.add_argument("--max-images", action=shared.IntInRange, low=1, high=4096, default=8,
                   help="most images (n) per image request, <= --max-batch (default 8)")  # fmt: skip
    p.add_argument("--max-steps", action=shared.IntInRange, low=1, high=10_000, default=50,
                   help="most sampler steps per image request (default 50)")  # fmt: skip
    p.add_argument("--max-streams", action=shared.IntInRange, low=1, high=1024, default=4,
                   help="world streams open at once; more are closed with 1013 (default 4)")  # fmt: skip
    p.add_argument("--idle-timeout", type=float, default=60.0,
                   help="seconds a world socket may send nothing before it is closed (default 60)")  # fmt: skip
    cores = usable_cores()
    p.add_argument("--torch-threads", action=shared.IntInRange, low=1, high=1024, default=None,
                   help=f"torch intra-op threads for the model thread (default: the {cores} usable cores; "
                   "with --ray the CPUs of a replica)")  # fmt: skip
    p.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment of --replicas replicas "
                   "(local Ray, or the cluster at RAY_ADDRESS); needs the ray extra")  # fmt: skip
    p.add_argument("--replicas", action=shared.IntInRange, low=1, high=1024, default=1,
                   help="with --ray: replicas at start (default 1)")  # fmt: skip
    p.add_argument("--min-replicas", action=shared.IntInRange, low=0, high=1024, default=None,
                   help="with --ray: autoscale down to this many (default --replicas: no autoscaling)")  # fmt: skip
    p.add_argument("--max-replicas", action=shared.IntInRange, low=1, high=1024, default=None,
                   help="with --ray: autoscale up to this many (default --replicas: no autoscaling)")  # fmt: skip
    p.add_argument("--replica-cpus", type=float, default=1.0,
                   help="with --ray: CPUs Ray reserves per replica (default 1)")  # fmt: skip
    p.add_argument("--no-quality", action="store_true",
                   help="skip scoring each image's prompt adherence with the shipped shapes classifier")  # fmt: skip
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info",
                   help="uvicorn's log level (default info)")  # fmt: skip
    shared.add_device(p)
    p.set_defaults(func=cmd_serve)
    return p
