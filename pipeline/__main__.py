"""Command line: ``python -m pipeline draw PROMPT ...`` and ``python -m pipeline samplers``."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from pipeline.cpu import CpuConfigError, configure_cpu_threads
from pipeline.engine import DEFAULT_MODEL
from pipeline.errors import EaselError
from pipeline.request import MAX_SEED, DrawRequest, guidance_label
from pipeline.samplers import SAMPLERS, sampler_label


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Draw pictures with a diffusers text-to-image model, reproducibly.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    model_help = (
        "hub id, local folder, or a built-in offline model: tiny:shapes (trained), "
        "tiny:sd / tiny:ldm (random weights) "
        f"(default {DEFAULT_MODEL})"
    )

    draw = sub.add_parser(
        "draw",
        help="draw a prompt into PNG files that carry their settings",
        description="Draw PROMPT. The PNG carries every setting (A1111 'parameters' chunk); "
        "the same settings and seed give the same picture (byte-identical on the same machine).",
    )
    draw.add_argument("prompt", nargs="?", help="what to draw (optional with --from)")
    draw.add_argument("--model", help=model_help)
    draw.add_argument("--steps", type=int, help="denoising steps, 1-150 (default 50)")
    draw.add_argument("--guidance", type=float, help="guidance (CFG) scale, 0-30 (default 6)")
    draw.add_argument("--eta", type=float, help="DDIM eta, 0-1 (default 0)")
    draw.add_argument(
        "--sampler",
        choices=list(SAMPLERS),
        metavar="SAMPLER",
        help="sampler id: " + ", ".join(SAMPLERS) + " (default: the model's own)",
    )
    draw.add_argument("--seed", type=int, help=f"0-{MAX_SEED} (default: random, printed)")
    draw.add_argument("--width", type=int, help="pixels, multiple of 8 (default: the model's)")
    draw.add_argument("--height", type=int, help="pixels, multiple of 8 (default: the model's)")
    draw.add_argument("--count", type=int, help="images, 1-4; image i uses seed+i (default 1)")
    draw.add_argument("--negative", help="negative prompt (models that support one)")
    draw.add_argument(
        "--from",
        dest="from_png",
        type=Path,
        metavar="PNG",
        help="redraw the image a PNG of ours (or A1111's) describes; other options override",
    )
    draw.add_argument("-o", "--output", type=Path, required=True, help="output PNG path")
    draw.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")

    samplers = sub.add_parser("samplers", help="list the samplers a model supports")
    samplers.add_argument("--model", default=DEFAULT_MODEL, help=model_help)
    samplers.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    return parser


def _request(args: argparse.Namespace, parser: argparse.ArgumentParser) -> DrawRequest:
    from pipeline.pngmeta import read_parameters, request_from_parameters

    base = DrawRequest(prompt="")
    if args.from_png is not None:
        try:
            text = read_parameters(args.from_png)
        except OSError as exc:
            parser.error(f"can't read {args.from_png}: {exc}")
        if not text:
            parser.error(f"{args.from_png} carries no 'parameters' settings")
        base = request_from_parameters(text)
    elif not args.prompt:
        parser.error("give a PROMPT (or --from PNG)")
    overrides = {
        "prompt": args.prompt,
        "negative_prompt": args.negative,
        "steps": args.steps,
        "guidance": args.guidance,
        "eta": args.eta,
        "sampler": args.sampler,
        "seed": args.seed,
        "width": args.width,
        "height": args.height,
        "count": args.count,
    }
    request = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    # A PNG names the model it came from; --model (or that name) decides what loads.
    return replace(request, model=None)


def _outputs(path: Path, count: int) -> list[Path]:
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i + 1}{path.suffix or '.png'}") for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        configure_cpu_threads(model=args.model or DEFAULT_MODEL)  # before anything imports torch
    except CpuConfigError as exc:
        parser.exit(2, f"error: {exc}\n")

    from pipeline.engine import Engine, quiet_library_logs

    # Download bars on a terminal; "downloading ... from https://huggingface.co" before them.
    quiet_library_logs()
    logging.getLogger("pipeline.engine").setLevel(logging.INFO)

    if args.command == "samplers":
        try:
            engine = Engine.load(args.model, device=args.device)
        except EaselError as exc:
            parser.exit(2, f"error: {exc}\n")
        caps = engine.capabilities
        print(f"{args.model} ({caps.pipeline_class}) supports:")
        for sid in caps.samplers:
            mark = "  (default)" if sid == caps.default_sampler else ""
            print(f"  {sid:<16} {SAMPLERS[sid].label}{mark}")
        return 0

    request = _request(args, parser)
    model = args.model or DEFAULT_MODEL
    try:
        engine = Engine.load(model, device=args.device)
        request = engine.resolve(request)
        for note in engine.validate(request):
            print(f"note: {note}", file=sys.stderr)
    except EaselError as exc:
        parser.exit(2, f"error: {exc}\n")

    from tqdm import tqdm

    from pipeline.pngmeta import format_parameters, save_png

    with tqdm(total=request.steps, desc="Drawing", unit="step", file=sys.stderr) as bar:

        def on_step(step: int, total: int) -> None:
            bar.total = total
            bar.n = step
            bar.refresh()

        result = engine.run(request, on_step=on_step)
    r = result.request
    paths = _outputs(args.output, r.count)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    flags = result.nsfw or (False,) * len(result.images)
    for image, seed, path, flagged in zip(result.images, result.seeds, paths, flags, strict=True):
        if flagged:
            # Same rule as the bot's default: what the safety checker flags is not kept.
            print(f"{path}  seed={seed}  not written: the safety checker flagged it")
            continue
        save_png(
            image,
            path,
            format_parameters(
                r,
                seed,
                eta=engine.capabilities.eta,
                pipeline_class=engine.capabilities.pipeline_class,
            ),
        )
        print(f"{path}  seed={seed}")
    sampler = sampler_label(r.sampler)
    print(
        f"{r.width}x{r.height}, {r.steps} steps, {sampler}, "
        f"guidance {guidance_label(r.guidance, engine.capabilities.pipeline_class)}, "
        f"model {r.model}, {result.duration_s / r.count:.2f} s per image",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
