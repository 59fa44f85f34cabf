"""Comparison grids (A1111's X/Y/Z plot): parse the values, lay out the cells, describe the grid.

Pure and Discord-free: the bot's /compare and ``python -m pipeline compare`` both build a
``Comparison`` here, validate each cell's request exactly as /draw does, run the cells, and draw
the grid with ``pipeline.grid``.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from pipeline.errors import BadCompareValue
from pipeline.messages import N_, Message
from pipeline.pngmeta import format_parameters, quote_value
from pipeline.request import DrawRequest
from pipeline.samplers import SAMPLERS, sampler_label

AXIS_ORDER = ("replace", "steps", "guidance", "eta", "sampler")
MAX_AXES = 3
MAX_CELLS = 16
# More values than this in one option can never fit in a grid; refusing early also keeps
# "1-1000000" from building a million-item list.
MAX_VALUES = 64

# A1111's X/Y/Z plot type names, as they appear in a grid's ``X Type: ...``.
_TYPE_NAMES = {
    "replace": "Prompt S/R",
    "steps": "Steps",
    "guidance": "CFG Scale",
    "eta": "Eta",
    "sampler": "Sampler",
}
# What people read in a label, before the value (translated where the grid is shown).
_LABEL_NAMES = {
    "steps": Message(N_("Steps")),
    "guidance": Message(N_("Guidance")),
    "eta": Message(N_("Eta")),
    "sampler": Message(N_("Sampler")),
}
# Examples in refusals, in each option's own range.
_EXAMPLES = {
    "steps": ('"20, 50"', '"10-50 (+10)"', '"10-50 [5]"'),
    "guidance": ('"2, 6"', '"2-8 (+2)"', '"2-8 [4]"'),
    "eta": ('"0.3, 0.8"', '"0-1 (+0.25)"', '"0-1 [5]"'),
}
_DEFAULT_EXAMPLES = ('"2, 6"', '"2-8 (+2)"', '"2-8 [4]"')

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
# "a", "a-b", "a-b (+s)", "a-b [n]"; the sign of each number is its own, so "-1--5 (-2)" works.
_ITEM = re.compile(
    rf"""^\s*(?P<start>{_NUMBER})
    (?:\s*-\s*(?P<end>{_NUMBER})
       (?:\s*\(\s*(?P<step>{_NUMBER})\s*\)|\s*\[\s*(?P<count>[+-]?\d+)\s*\])?
    )?\s*$""",
    re.VERBOSE,
)
_NAME_KEY = re.compile(r"[\s_\-]+")
# ``build_comparison`` has a parameter named ``replace``: dataclasses.replace under another name.
_replace_request = replace


def _how_to_write(option: str) -> Message:
    one, step, count = _EXAMPLES.get(option, _DEFAULT_EXAMPLES)
    if option in _EXAMPLES:
        return Message(
            N_("Write one value or a list like {one} or a range like {step} or {count}."),
            one=one,
            step=step,
            count=count,
        )
    return Message(N_("Write one value or a list like {one}."), one=one)


def _echo(text: str, limit: int = 80) -> str:
    """User text quoted back in a refusal, cut short: Discord refuses messages over 2000."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _refuse(option: str, item: str, message: str, **params: Any) -> BadCompareValue:
    """``message`` (a whole sentence with ``{option}``, ``{item}`` and ``{how}``) about one
    item of an option, and how to write the option."""
    return BadCompareValue(
        message, option=Message(option), item=_echo(item), how=_how_to_write(option), **params
    )


def _fmt(value: float) -> str:
    return f"{value:g}"


def _round(value: float) -> float:
    # 0.1 + 0.2 is 0.30000000000000004: four decimals is finer than any setting needs.
    rounded = round(value, 4)
    return rounded + 0.0  # turns -0.0 into 0.0


def _expand(option: str, item: str, integer: bool) -> list[float]:
    """The values one comma-separated item stands for (floats; whole-number checks come later)."""
    match = _ITEM.match(item)
    if match is None:
        if not item.strip():
            raise BadCompareValue(
                N_("{option}: there is an empty item between commas. {how}"),
                option=Message(option),
                how=_how_to_write(option),
            )
        if re.search(r"[-(\[]", item.strip()[1:]):
            raise _refuse(
                option, item.strip(), N_('{option}: "{item}" is not a number or a range. {how}')
            )
        raise _refuse(option, item.strip(), N_('{option}: "{item}" is not a number. {how}'))
    item = item.strip()
    start = float(match["start"])
    if match["end"] is None:
        return [start]
    end = float(match["end"])
    if match["count"] is not None:
        count = int(match["count"])
        if count < 1:
            raise _refuse(
                option,
                item,
                N_(
                    '{option}: "{item}" asks for a count below 1; the count in [ ] is how '
                    "many. {how}"
                ),
            )
        if count > MAX_VALUES:
            raise _refuse(
                option,
                item,
                N_('{option}: "{item}" asks for {count} values; at most {max} fit. {how}'),
                count=count,
                max=MAX_VALUES,
            )
        if count == 1:
            return [start]
        values = [start + (end - start) * i / (count - 1) for i in range(count)]
        if integer:
            values = [float(math.floor(v + 0.5)) for v in values]  # half up, as people round
            if len(set(values)) < len(values):
                raise _refuse(
                    option,
                    item,
                    N_(
                        '{option}: "{item}" asks for {count} values but fewer whole numbers lie '
                        "between {start} and {end}. {how}"
                    ),
                    count=count,
                    start=_fmt(start),
                    end=_fmt(end),
                )
        return values
    direction = 1.0 if end >= start else -1.0
    if match["step"] is None:
        step = direction  # A1111: a bare range counts in ones
    else:
        step = float(match["step"])
        if step == 0:
            raise _refuse(
                option,
                item,
                N_('{option}: "{item}" has a step of 0, which never reaches the end. {how}'),
            )
        if not match["step"].lstrip().startswith(("+", "-")):
            step = abs(step) * direction  # an unsigned step goes the way the range goes
        elif start != end and step * direction < 0:
            raise _refuse(
                option,
                item,
                N_(
                    '{option}: "{item}" counts from {start} to {end} with a step of {step}, '
                    "which goes the other way. {how}"
                ),
                start=_fmt(start),
                end=_fmt(end),
                step=_fmt(step),
            )
    # The end counts only where a step lands on it (within float rounding).
    n = math.floor((end - start) / step + 1e-9) + 1 if start != end else 1
    if n > MAX_VALUES:
        raise _refuse(
            option,
            item,
            N_('{option}: "{item}" gives {count} values; at most {max} fit. {how}'),
            count=n,
            max=MAX_VALUES,
        )
    return [start + i * step for i in range(n)]


def parse_numbers(text: str, *, option: str, integer: bool) -> list[int] | list[float]:
    """Values of a numeric option: ``50``, ``50,100``, ``10-50 (+10)``, ``10-50 [5]`` (A1111).

    Range checks (1-150 steps, ...) are the caller's, cell by cell, exactly as /draw does them.
    """
    if not text or not text.strip():
        raise BadCompareValue(
            N_("{option}: the value is empty. {how}"),
            option=Message(option),
            how=_how_to_write(option),
        )
    values: list[float] = []
    for item in text.split(","):
        for value in _expand(option, item, integer):
            value = _round(value)
            if integer and value != int(value):
                raise _refuse(
                    option,
                    item.strip(),
                    N_('{option}: "{item}" gives {value}, not a whole number. {how}'),
                    value=_fmt(value),
                )
            if value in values:
                raise BadCompareValue(
                    N_("{option} lists {value} twice; give each value once."),
                    option=Message(option),
                    value=_fmt(value),
                )
            values.append(value)
            if len(values) > MAX_VALUES:
                raise BadCompareValue(
                    N_("{option}: that is more than {max} values; give fewer."),
                    option=Message(option),
                    max=MAX_VALUES,
                )
    if integer:
        return [int(v) for v in values]
    return values


def _sampler_key(name: str) -> str:
    return _NAME_KEY.sub("", name.casefold())


_SAMPLER_KEYS = {
    **{_sampler_key(s.id): s.id for s in SAMPLERS.values()},
    **{_sampler_key(s.label): s.id for s in SAMPLERS.values()},
}


def parse_samplers(text: str, available: Sequence[str]) -> list[str]:
    """Sampler ids from a comma list of ids or names (``ddim, DPM++ 2M``); any case or spacing."""
    names = ", ".join(sampler_label(s) for s in available)
    found: list[str] = []
    items = (text or "").split(",")
    for item in items:
        name = item.strip()
        if not name:
            raise BadCompareValue(
                N_(
                    'sampler: give a comma list of samplers, like "DDIM, DPM++ 2M", without '
                    "empty items. This model can use: {names}."
                ),
                names=names,
            )
        sid = _SAMPLER_KEYS.get(_sampler_key(name))
        if sid is None:
            raise BadCompareValue(
                N_('sampler: "{name}" is not a sampler. This model can use: {names}.'),
                name=_echo(name),
                names=names,
            )
        if sid not in available:
            raise BadCompareValue(
                N_("sampler: {sampler} can't be used with this model. It can use: {names}."),
                sampler=sampler_label(sid),
                names=names,
            )
        if sid in found:
            raise BadCompareValue(
                N_("sampler lists {sampler} twice; give each sampler once."),
                sampler=sampler_label(sid),
            )
        found.append(sid)
    return found


def parse_replace(text: str, prompt: str) -> list[str]:
    """A1111's Prompt S/R: a CSV list whose first item appears in the prompt; each cell swaps it.

    Quotes allow commas inside an item (``painting, "photo, sharp"``). Later items may be empty:
    that cell leaves the words out.
    """
    try:
        rows = list(csv.reader(io.StringIO(text or ""), skipinitialspace=True))
    except csv.Error as exc:
        raise BadCompareValue(
            N_(
                'replace: "{text}" can\'t be read as a comma list ({error}). Write the words to '
                'replace first, then their replacements: "painting, photo".'
            ),
            text=_echo(text),
            error=str(exc),
        ) from None
    items = [item.strip() for row in rows for item in row]
    if not items or not items[0]:
        raise BadCompareValue(
            N_(
                "replace: the first item is empty. Write words from the prompt first, then what "
                'to put in their place: "painting, photo".'
            )
        )
    first = items[0]
    if first not in prompt:
        raise BadCompareValue(
            N_(
                'replace: the first item, "{first}", must appear in the prompt; each cell puts '
                "one of the items in its place. Start the list with words copied from the "
                "prompt (capitals count)."
            ),
            first=_echo(first),
        )
    seen: set[str] = set()
    for item in items:
        if item in seen:
            if not item:
                raise BadCompareValue(N_("replace lists an empty item twice; give each item once."))
            raise BadCompareValue(
                N_('replace lists "{item}" twice; give each item once.'), item=_echo(item)
            )
        seen.add(item)
    return items


@dataclass(frozen=True)
class Axis:
    """One setting that varies across the grid, with its values in order."""

    name: str
    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if self.name not in AXIS_ORDER:
            raise ValueError(f"unknown axis {self.name!r}; expected one of {AXIS_ORDER}")
        # One type per axis, so an axis rebuilt from JSON (or from ints for guidance) is equal.
        kind: type = {"steps": int, "guidance": float, "eta": float}.get(self.name, str)
        object.__setattr__(self, "values", tuple(kind(v) for v in self.values))

    @property
    def type_name(self) -> str:
        """A1111's X/Y/Z type name: ``Steps``, ``CFG Scale``, ``Prompt S/R``, ..."""
        return _TYPE_NAMES[self.name]

    @property
    def title(self) -> Message | None:
        """What the setting is called where people read it (``Steps``); None for replace."""
        return _LABEL_NAMES.get(self.name)

    def shown(self, i: int) -> str:
        """Value ``i`` as people read it: ``50``, ``DPM++ 2M``, the words, ``(left out)``."""
        value = self.values[i]
        if self.name == "replace":
            return value if value else Message(N_("(left out)"))
        return sampler_label(value) if self.name == "sampler" else _fmt(value)

    def label(self, i: int) -> str:
        """What people read beside row, column or sub-grid ``i``: ``Steps: 50``, the words.

        A ``Message``: English as a str, in the viewer's language through ``localized``."""
        if self.name == "replace":
            return self.shown(i)
        return Message(N_("{name}: {value}"), name=self.title, value=self.shown(i))

    def apply(self, request: DrawRequest, i: int) -> DrawRequest:
        """``request`` with this axis set to value ``i``."""
        value = self.values[i]
        if self.name == "replace":
            # A1111's Prompt S/R replaces every occurrence, in the negative prompt too.
            first = self.values[0]
            return replace(
                request,
                prompt=request.prompt.replace(first, value),
                negative_prompt=request.negative_prompt.replace(first, value),
            )
        return replace(request, **{self.name: value})

    def values_text(self) -> str:
        """The values as A1111 writes them after ``X Values:`` (before quoting)."""
        if self.name == "replace":
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="").writerow(self.values)
            return buffer.getvalue()
        if self.name == "sampler":
            return ",".join(sampler_label(v) for v in self.values)
        return ",".join(_fmt(v) for v in self.values)


@dataclass(frozen=True)
class Cell:
    """One picture of the grid: where it goes and the request that draws it."""

    index: int
    x: int
    y: int
    z: int
    request: DrawRequest


@dataclass(frozen=True)
class Comparison:
    """A grid: the fixed settings on ``base`` and up to three axes (X, Y, Z)."""

    base: DrawRequest
    axes: tuple[Axis, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(columns, rows, sub-grids); 1 where an axis is absent."""
        sizes = [len(a.values) for a in self.axes] + [1, 1, 1]
        return sizes[0], sizes[1], sizes[2]

    def cells(self) -> list[Cell]:
        """Every cell in run order: sub-grid by sub-grid, row by row, X fastest."""
        nx, ny, nz = self.shape
        cells: list[Cell] = []
        for z in range(nz):
            for y in range(ny):
                for x in range(nx):
                    request = self.base
                    for axis, i in zip(self.axes, (x, y, z), strict=False):
                        request = axis.apply(request, i)
                    cells.append(Cell(len(cells), x, y, z, request))
        return cells

    def cell_labels(self, cell: Cell) -> list[str]:
        """The labels of the axis values that made ``cell``, X first."""
        return [a.label(i) for a, i in zip(self.axes, (cell.x, cell.y, cell.z), strict=False)]

    @property
    def fixed(self) -> dict[str, str]:
        """The settings every cell shares, as people read them (a footer)."""
        varying = {a.name for a in self.axes}
        b = self.base
        out: dict[str, str] = {}
        if "steps" not in varying:
            out["Steps"] = str(b.steps)
        if "guidance" not in varying:
            out["Guidance"] = _fmt(b.guidance)
        uses_eta = b.sampler in SAMPLERS and SAMPLERS[b.sampler].uses_eta
        if "eta" not in varying and (b.eta or ("sampler" not in varying and uses_eta)):
            out["Eta"] = _fmt(b.eta)
        if "sampler" not in varying and b.sampler is not None:
            out["Sampler"] = sampler_label(b.sampler)
        if b.width is not None and b.height is not None:
            out["Size"] = f"{b.width}x{b.height}"
        if b.seed is not None:
            out["Seed"] = str(b.seed)
        if b.model is not None:
            out["Model"] = b.model
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; ``from_dict`` rebuilds an equal comparison."""
        return {
            "base": self.base.to_dict(),
            "axes": [{"name": a.name, "values": list(a.values)} for a in self.axes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        return cls(
            base=DrawRequest.from_dict(data["base"]),
            axes=tuple(Axis(a["name"], tuple(a["values"])) for a in data["axes"]),
        )

    def parameters(self, *, eta: bool = True, pipeline_class: str | None = None) -> str:
        """A1111-style ``parameters`` text for the grid PNG.

        The settings are the first cell's (as A1111 writes a grid's), then ``X Type``,
        ``X Values`` and so on for each axis.
        """
        first = self.cells()[0].request
        text = format_parameters(first, eta=eta, pipeline_class=pipeline_class)
        pairs = []
        for letter, axis in zip("XYZ", self.axes, strict=False):
            pairs.append(f"{letter} Type: {axis.type_name}")
            pairs.append(f"{letter} Values: {quote_value(axis.values_text())}")
        return f"{text}, {', '.join(pairs)}"


def build_comparison(
    base: DrawRequest,
    *,
    replace: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    guidance: Sequence[float] | None = None,
    eta: Sequence[float] | None = None,
    samplers: Sequence[str] | None = None,
    max_cells: int = MAX_CELLS,
) -> Comparison:
    """The grid for these values: options with one value are fixed, the others are axes.

    ``base`` must carry a seed (every cell shares it); its count is forced to 1.
    """
    if base.seed is None:
        raise ValueError("a comparison needs a seed: every cell uses the same one")
    request = _replace_request(base, count=1)
    given = {"replace": replace, "steps": steps, "guidance": guidance, "eta": eta}
    given["sampler"] = samplers
    axes: list[Axis] = []
    for name in AXIS_ORDER:
        values = given[name]
        if not values:
            continue
        axis = Axis(name, tuple(values))
        if len(set(axis.values)) < len(axis.values):
            raise BadCompareValue(
                N_("{name} lists a value twice; give each value once."), name=Message(name)
            )
        if len(axis.values) == 1:
            request = axis.apply(request, 0)
        else:
            axes.append(axis)
    if not axes:
        raise BadCompareValue(
            N_(
                'Give at least one setting more than one value, e.g. steps: "20, 50" or '
                'guidance: "2, 6"; with nothing varying, use /draw.'
            )
        )
    if len(axes) > MAX_AXES:
        names = ", ".join(a.name for a in axes)
        raise BadCompareValue(
            N_(
                "At most {max} settings can vary at once; you gave {count}: {names}. Fix one "
                "of them to a single value."
            ),
            max=MAX_AXES,
            count=len(axes),
            names=names,
        )
    limit = min(max_cells, MAX_CELLS)
    sizes = [len(a.values) for a in axes]
    cells = math.prod(sizes)
    if cells > limit:
        if len(sizes) > 1:
            raise BadCompareValue(
                N_(
                    "That is {cells} cells ({shape}); this server allows at most {limit}. Give "
                    "fewer values."
                ),
                cells=cells,
                shape=" x ".join(map(str, sizes)),
                limit=limit,
            )
        raise BadCompareValue(
            N_("That is {cells} cells; this server allows at most {limit}. Give fewer values."),
            cells=cells,
            limit=limit,
        )
    return Comparison(base=request, axes=tuple(axes))
