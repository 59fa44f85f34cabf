"""Command line: ``python -m pipeline draw PROMPT ...``, ``compare PROMPT ...`` and ``samplers``."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from pipeline.compare import MAX_CELLS
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
        "--image",
        type=Path,
        metavar="PICTURE",
        help="start from this picture (image to image; SD models); its size is used",
    )
    draw.add_argument(
        "--strength",
        type=float,
        help="with --image: how much of it to redraw, 0-1 (default 0.6, or the PNG's)",
    )
    draw.add_argument(
        "--variation-seed",
        type=int,
        help="mix this seed's starting noise in (A1111's variation seed; image i uses it + i)",
    )
    draw.add_argument(
        "--variation-strength",
        type=float,
        help="how far towards the variation seed, 0-1 (0.25 subtle, 0.6 strong; default 0)",
    )
    draw.add_argument(
        "--from",
        dest="from_png",
        type=Path,
        metavar="PNG",
        help="redraw the image a PNG of ours (or A1111's) describes; other options override",
    )
    draw.add_argument("-o", "--output", type=Path, required=True, help="output PNG path")
    draw.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")

    _add_compare(sub, model_help)

    samplers = sub.add_parser("samplers", help="list the samplers a model supports")
    samplers.add_argument("--model", default=DEFAULT_MODEL, help=model_help)
    samplers.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    return parser


def _add_compare(sub: Any, model_help: str) -> None:
    values = ' a list ("{a}") or a range ("{b}" steps by {s}, "{c}" gives {n} values)'
    compare = sub.add_parser(
        "compare",
        help="draw a grid that compares settings (A1111's X/Y/Z plot)",
        description="Draw PROMPT once per combination of the values given and put the pictures "
        "in one PNG grid with labelled rows and columns. Options given more than one value are "
        "the axes, in the order --replace, --steps, --guidance, --eta, --sampler: the first is "
        "the columns (X), the second the rows (Y), the third sub-grids side by side (Z); at most "
        f"3 of them and {MAX_CELLS} cells. Every cell uses the same seed, so cells differ only "
        "by the values compared. The grid carries its settings (A1111's 'parameters' chunk, "
        "with X/Y/Z Type and Values); the same command writes the same grid (byte-identical on "
        "the same machine).",
    )
    compare.add_argument("prompt", help="what to draw")
    compare.add_argument("--model", help=model_help)
    compare.add_argument("--negative", help="negative prompt (models that support one)")
    compare.add_argument(
        "--steps",
        metavar="VALUES",
        help="denoising steps, 1-150: one value,"
        + values.format(a="20,50", b="10-50 (+10)", s=10, c="10-50 [5]", n=5)
        + " (default 50)",
    )
    compare.add_argument(
        "--guidance",
        metavar="VALUES",
        help="guidance (CFG) scale, 0-30: one value,"
        + values.format(a="2,6", b="2-8 (+2)", s=2, c="2-8 [4]", n=4)
        + " (default 6)",
    )
    compare.add_argument(
        "--eta",
        metavar="VALUES",
        help="DDIM eta, 0-1: one value,"
        + values.format(a="0.3,0.8", b="0-1 (+0.25)", s=0.25, c="0-1 [5]", n=5)
        + " (default 0)",
    )
    compare.add_argument(
        "--sampler",
        metavar="SAMPLERS",
        help='one sampler or a comma list of ids or names ("ddim,DPM++ 2M"): '
        + ", ".join(SAMPLERS)
        + " (default: the model's own)",
    )
    compare.add_argument(
        "--replace",
        metavar="LIST",
        help="compare wordings (A1111's Prompt S/R): a comma list whose first item appears in "
        "the prompt; each column puts one item in its place (quotes allow commas inside an "
        "item: 'painting, \"photo, sharp\"')",
    )
    compare.add_argument(
        "--seed", type=int, help=f"0-{MAX_SEED}, one for every cell (default: random, printed)"
    )
    compare.add_argument("--width", type=int, help="pixels, multiple of 8 (default: the model's)")
    compare.add_argument("--height", type=int, help="pixels, multiple of 8 (default: the model's)")
    compare.add_argument("-o", "--output", type=Path, required=True, help="the grid PNG's path")
    compare.add_argument(
        "--cells",
        type=Path,
        metavar="DIR",
        help="also keep each cell as its own PNG with its own settings: DIR/cell-01.png, ...",
    )
    compare.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")


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
        "variation_seed": args.variation_seed,
        "variation_strength": args.variation_strength,
    }
    request = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if args.image is not None:
        if not args.image.is_file():
            parser.error(f"can't read {args.image}: no such file")
        strength = args.strength if args.strength is not None else (request.strength or 0.6)
        request = replace(
            request,
            task="img2img",
            init_image=str(args.image),
            strength=strength,
            width=None if args.width is None else args.width,
            height=None if args.height is None else args.height,
        )
    elif request.strength is not None or args.strength is not None:
        parser.error(
            "this picture was drawn from another picture: give that one with --image PICTURE"
        )
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

    if args.command == "compare":
        return _compare(args, parser)

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


def _compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``python -m pipeline compare``: check every cell as ``draw`` would, draw, write the grid."""
    from pipeline.compare import build_comparison, parse_numbers, parse_replace, parse_samplers
    from pipeline.engine import Engine

    def fail(message: object) -> NoReturn:
        parser.exit(2, f"error: {message}\n")

    numbers: dict[str, Any] = {}
    try:
        # The values first: a typo is reported before a model loads.
        for option, integer in (("steps", True), ("guidance", False), ("eta", False)):
            text = getattr(args, option)
            if text is not None:
                numbers[option] = parse_numbers(text, option=option, integer=integer)
        replace_items = None
        if args.replace is not None:
            replace_items = parse_replace(args.replace, args.prompt)
    except EaselError as exc:
        fail(exc)
    try:
        engine = Engine.load(args.model or DEFAULT_MODEL, device=args.device)
    except EaselError as exc:
        fail(exc)
    caps = engine.capabilities
    base = DrawRequest(
        prompt=args.prompt,
        negative_prompt=args.negative or "",
        seed=args.seed,
        width=args.width,
        height=args.height,
    )
    notes: list[str] = []
    try:
        samplers = None
        if args.sampler is not None:
            samplers = parse_samplers(args.sampler, caps.samplers)
        comparison = build_comparison(
            engine.resolve(base), replace=replace_items, samplers=samplers, **numbers
        )
        for cell in comparison.cells():
            try:
                found = engine.validate(cell.request)
            except EaselError as exc:
                fail(f"in the cell {', '.join(comparison.cell_labels(cell))}: {exc}")
            notes += [note for note in found if note not in notes]
    except EaselError as exc:
        fail(exc)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)

    images, missing, results = _run_cells(engine, comparison)

    from pipeline.grid import render_grid
    from pipeline.pngmeta import format_parameters, save_png

    seed = comparison.base.seed
    args.output.parent.mkdir(parents=True, exist_ok=True)
    grid = render_grid(comparison, images, missing=missing)
    parameters = comparison.parameters(eta=caps.eta, pipeline_class=caps.pipeline_class)
    save_png(grid, args.output, parameters)
    nx, ny, nz = comparison.shape
    shape = " x ".join(str(n) for n in (nx, ny, nz)[: len(comparison.axes)])
    print(f"{args.output}  seed={seed}  ({shape} grid)")
    if args.cells is not None:
        args.cells.mkdir(parents=True, exist_ok=True)
        width = max(2, len(str(len(results))))
        for cell, result in results:
            labels = ", ".join(comparison.cell_labels(cell))
            if cell.index not in images:
                print(f"cell {cell.index + 1}  {labels}  not written: {missing[cell.index]}")
                continue
            path = args.cells / f"cell-{cell.index + 1:0{width}d}.png"
            text = format_parameters(
                result.request, eta=caps.eta, pipeline_class=caps.pipeline_class
            )
            save_png(images[cell.index], path, text)
            print(f"{path}  {labels}")
    duration = sum(result.duration_s for _, result in results)
    print(
        f"{len(results)} cells, {len(images)} drawn, model {comparison.base.model}, "
        f"{duration / max(1, len(results)):.2f} s per cell",
        file=sys.stderr,
    )
    return 0


def _run_cells(engine: Any, comparison: Any) -> tuple[dict[int, Any], dict[int, str], list[Any]]:
    """Draw every cell, batching neighbours that can share a pipeline call, under one bar."""
    from tqdm import tqdm

    from pipeline.engine import batch_key

    cells = comparison.cells()
    # Consecutive cells with equal keys, up to the engine's batch size: the same grouping on
    # every run, since a picture's bits depend on the batch it was drawn in.
    groups: list[list[Any]] = []
    for cell in cells:
        last = groups[-1] if groups else None
        if (
            last is not None
            and len(last) < engine.capabilities.max_count
            and batch_key(last[0].request) == batch_key(cell.request)
        ):
            last.append(cell)
        else:
            groups.append([cell])
    images: dict[int, Any] = {}
    missing: dict[int, str] = {}
    results: list[Any] = []
    total = sum(c.request.steps for c in cells)
    with tqdm(total=total, desc=f"cell 1/{len(cells)}", unit="step", file=sys.stderr) as bar:
        done = 0
        for group in groups:
            first, last_index = group[0].index + 1, group[-1].index + 1
            which = f"{first}" if first == last_index else f"{first}-{last_index}"
            bar.set_description(f"cell {which}/{len(cells)}")
            weight = sum(c.request.steps for c in group)

            def on_step(step: int, steps: int, done: int = done, weight: int = weight) -> None:
                # Some samplers take more model calls than steps: count in shares of the group.
                bar.n = done + weight * min(step, steps) // max(1, steps)
                bar.refresh()

            out = engine.run_batch([c.request for c in group], on_step=on_step)
            done += weight
            bar.n = done
            bar.refresh()
            for cell, result in zip(group, out, strict=True):
                results.append((cell, result))
                if result.nsfw and result.nsfw[0]:
                    # Same rule as draw: what the safety checker flags is not kept.
                    missing[cell.index] = "withheld: the safety checker flagged it"
                else:
                    images[cell.index] = result.images[0]
    return images, missing, results


if __name__ == "__main__":
    sys.exit(main())
