"""/compare's pure parts: the value parsers, the Comparison, and the grid's layout and pixels."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.compare import (
    AXIS_ORDER,
    MAX_CELLS,
    Axis,
    Comparison,
    build_comparison,
    parse_numbers,
    parse_replace,
    parse_samplers,
)
from pipeline.errors import BadCompareValue, EaselError
from pipeline.grid import (
    FONT_PATH,
    MIN_FONT_SIZE,
    cell_scale,
    font,
    grid_layout,
    render_grid,
    wrap,
)
from pipeline.pngmeta import parse_parameters, png_bytes, request_from_parameters
from pipeline.request import DrawRequest

SQUIRREL = "A painting of a squirrel eating a banana"
LDM_SAMPLERS = ("ddim", "pndm", "ddpm", "dpmpp_2m", "dpmpp_2m_karras", "unipc")


def steps(text: str) -> list:
    return parse_numbers(text, option="steps", integer=True)


def guidance(text: str) -> list:
    return parse_numbers(text, option="guidance", integer=False)


# -- parse_numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("50", [50]),
        ("50,100", [50, 100]),
        (" 20 , 30,40 ", [20, 30, 40]),
        ("10-50 (+10)", [10, 20, 30, 40, 50]),
        ("10-50 (10)", [10, 20, 30, 40, 50]),
        ("10-50 (+15)", [10, 25, 40]),  # the end only where a step lands on it
        ("10-50 [5]", [10, 20, 30, 40, 50]),
        ("10-20 [3]", [10, 15, 20]),
        ("1-4 [3]", [1, 3, 4]),  # 2.5 rounds half up
        ("50-10 (-10)", [50, 40, 30, 20, 10]),
        ("50-10 (10)", [50, 40, 30, 20, 10]),  # an unsigned step follows the range
        ("50-10 [3]", [50, 30, 10]),
        ("3-6", [3, 4, 5, 6]),  # a bare range counts in ones, as A1111 does
        ("5-5", [5]),
        ("1, 10-30 (+10)", [1, 10, 20, 30]),
        ("50.0", [50]),
    ],
)
def test_integer_lists_and_both_range_forms(text, expected):
    values = steps(text)
    assert values == expected
    assert all(type(v) is int for v in values)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2, 6", [2.0, 6.0]),
        ("1-2 [3]", [1.0, 1.5, 2.0]),
        ("1-2 (+0.5)", [1.0, 1.5, 2.0]),
        ("0-1 (+0.1)", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
        ("0.1-0.3 (+0.1)", [0.1, 0.2, 0.3]),  # the end lands despite 0.1 + 0.2 != 0.3
        ("8-2 (-2.5)", [8.0, 5.5, 3.0]),
        ("0-1 [4]", [0.0, 0.3333, 0.6667, 1.0]),  # four decimals, not 0.333333...
        (".5, 7.5", [0.5, 7.5]),
        ("-1", [-1.0]),  # ranges are the caller's to check, cell by cell, as /draw does
    ],
)
def test_float_lists_and_ranges_are_rounded(text, expected):
    values = guidance(text)
    assert values == expected
    assert all(type(v) is float for v in values)
    assert 0.3 in guidance("0.1-0.3 (+0.1)")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("abc", ['"abc" is not a number']),
        ("1-", ['"1-" is not a number or a range']),
        ("50 steps", ['"50 steps" is not a number']),
        ("10-50 (+0)", ['"10-50 (+0)"', "step of 0"]),
        ("10-50 [0]", ['"10-50 [0]"', "count below 1"]),
        ("10-50 [-3]", ['"10-50 [-3]"', "count below 1"]),
        ("10-50 (-10)", ['"10-50 (-10)"', "other way"]),
        ("50-10 (+10)", ['"50-10 (+10)"', "other way"]),
        ("", ["empty"]),
        ("   ", ["empty"]),
        ("1,,2", ["empty item"]),
        ("50,", ["empty item"]),
        ("2.5", ['"2.5"', "not a whole number"]),
        ("1-2 [3]", ['"1-2 [3]"', "whole numbers"]),  # 1, 1.5, 2 has no whole middle
        ("1-3 (+0.5)", ["not a whole number"]),
        ("1-1000", ["1000 values", "at most 64"]),
        ("1-10 [100]", ["100 values", "at most 64"]),
        ("50,100,50", ["steps lists 50 twice; give each value once."]),
        ("10-50 (+10), 30", ["lists 30 twice"]),
    ],
)
def test_junk_is_refused_naming_the_option_and_the_text(text, words):
    with pytest.raises(BadCompareValue) as refused:
        steps(text)
    message = str(refused.value)
    assert message.startswith("steps")
    for word in words:
        assert word in message
    assert isinstance(refused.value, EaselError)


def test_refusals_say_what_to_write_in_the_options_own_terms():
    with pytest.raises(BadCompareValue) as refused:
        guidance("abc")
    assert str(refused.value) == (
        'guidance: "abc" is not a number. Write one value or a list like "2, 6" or a range '
        'like "2-8 (+2)" or "2-8 [4]".'
    )
    with pytest.raises(BadCompareValue, match=r'^eta: "x".*"0\.3, 0\.8"'):
        parse_numbers("x", option="eta", integer=False)
    with pytest.raises(BadCompareValue, match="guidance lists 6 twice"):
        guidance("6, 6.0")
    with pytest.raises(BadCompareValue, match=r"guidance lists 0\.3 twice"):
        guidance("0.30000000000000004, 0.3")


# -- parse_samplers -----------------------------------------------------------------------


def test_samplers_by_id_or_name_in_any_case_or_spacing():
    assert parse_samplers("ddim, dpmpp_2m", LDM_SAMPLERS) == ["ddim", "dpmpp_2m"]
    assert parse_samplers("DPM++ 2M,DDIM", LDM_SAMPLERS) == ["dpmpp_2m", "ddim"]
    assert parse_samplers("dpm++ 2m karras , UniPC", LDM_SAMPLERS) == ["dpmpp_2m_karras", "unipc"]
    assert parse_samplers("Euler a", ["euler_a"]) == ["euler_a"]
    assert parse_samplers("pndm", LDM_SAMPLERS) == ["pndm"]


def test_unknown_and_unavailable_samplers_are_refused_listing_what_works():
    with pytest.raises(BadCompareValue) as unknown:
        parse_samplers("ddim, magic", LDM_SAMPLERS)
    assert '"magic" is not a sampler' in str(unknown.value)
    assert "DDIM, PNDM, DDPM, DPM++ 2M, DPM++ 2M Karras, UniPC" in str(unknown.value)
    with pytest.raises(BadCompareValue) as unavailable:
        parse_samplers("Euler a", LDM_SAMPLERS)
    assert "Euler a can't be used with this model" in str(unavailable.value)
    assert "DDIM" in str(unavailable.value)
    with pytest.raises(BadCompareValue, match="lists DDIM twice"):
        parse_samplers("ddim, DDIM", LDM_SAMPLERS)
    with pytest.raises(BadCompareValue, match="sampler"):
        parse_samplers("ddim,,pndm", LDM_SAMPLERS)


# -- parse_replace ------------------------------------------------------------------------


def test_replace_is_a_csv_list_with_quotes_for_commas():
    assert parse_replace("painting, photorealistic image", SQUIRREL) == [
        "painting",
        "photorealistic image",
    ]
    assert parse_replace('painting, "photo, sharp", sketch', SQUIRREL) == [
        "painting",
        "photo, sharp",
        "sketch",
    ]
    assert parse_replace("a painting of, ", SQUIRREL.lower()) == ["a painting of", ""]


def test_replace_first_item_must_appear_in_the_prompt():
    with pytest.raises(BadCompareValue) as refused:
        parse_replace("photo, painting", SQUIRREL)
    assert str(refused.value).startswith(
        'replace: the first item, "photo", must appear in the prompt;'
    )
    with pytest.raises(BadCompareValue, match='"a painting"'):
        parse_replace("a painting, a photo", SQUIRREL)  # capitals count, as in A1111
    with pytest.raises(BadCompareValue, match="first item is empty"):
        parse_replace(", photo", SQUIRREL)
    with pytest.raises(BadCompareValue, match="first item is empty"):
        parse_replace("", SQUIRREL)
    with pytest.raises(BadCompareValue, match='lists "photo" twice'):
        parse_replace("painting, photo, photo", SQUIRREL)


# -- Axis and Comparison ------------------------------------------------------------------


def base(**changes) -> DrawRequest:
    fields = {
        "prompt": SQUIRREL,
        "seed": 7,
        "sampler": "ddim",
        "width": 64,
        "height": 64,
        "model": "tiny:ldm",
    }
    return DrawRequest(**{**fields, **changes})


def test_axis_labels_and_type_names():
    assert Axis("steps", (50, 100)).label(0) == "Steps: 50"
    assert Axis("guidance", (2, 6.5)).label(1) == "Guidance: 6.5"
    assert Axis("eta", (0.3,)).label(0) == "Eta: 0.3"
    assert Axis("sampler", ("ddim", "dpmpp_2m")).label(1) == "Sampler: DPM++ 2M"
    assert Axis("replace", ("painting", "photo", "")).label(1) == "photo"
    assert Axis("replace", ("painting", "photo", "")).label(2) == "(left out)"
    names = [Axis(n, ("1",) if n in ("replace", "sampler") else (1,)).type_name for n in AXIS_ORDER]
    assert names == ["Prompt S/R", "Steps", "CFG Scale", "Eta", "Sampler"]
    with pytest.raises(ValueError):
        Axis("seed", (1, 2))


def test_replace_swaps_every_occurrence_in_both_prompts():
    axis = Axis("replace", ("cat", "dog"))
    request = DrawRequest("a cat and a cat", negative_prompt="cat hair")
    swapped = axis.apply(request, 1)
    assert swapped.prompt == "a dog and a dog"
    assert swapped.negative_prompt == "dog hair"
    assert axis.apply(request, 0) == request


def test_axes_follow_the_fixed_order_and_cells_run_x_fastest():
    c = build_comparison(
        base(),
        samplers=["ddim", "pndm"],
        eta=[0.0, 0.5],
        steps=[10, 20, 30],
    )
    assert [a.name for a in c.axes] == ["steps", "eta", "sampler"]
    assert c.shape == (3, 2, 2)
    cells = c.cells()
    assert [(cell.index, cell.x, cell.y, cell.z) for cell in cells[:4]] == [
        (0, 0, 0, 0),
        (1, 1, 0, 0),
        (2, 2, 0, 0),
        (3, 0, 1, 0),
    ]
    assert cells[-1].x == 2 and cells[-1].y == 1 and cells[-1].z == 1 and cells[-1].index == 11
    last = cells[-1].request
    assert (last.steps, last.eta, last.sampler, last.seed) == (30, 0.5, "pndm", 7)
    assert {cell.request.seed for cell in cells} == {7}  # one seed for every cell
    assert c.cell_labels(cells[4]) == ["Steps: 20", "Eta: 0.5", "Sampler: DDIM"]


def test_single_values_are_fixed_settings_and_count_is_one():
    c = build_comparison(base(count=3), steps=[30], guidance=[2, 6], eta=[0.4])
    assert [a.name for a in c.axes] == ["guidance"]
    assert c.shape == (2, 1, 1)
    assert c.base.steps == 30 and c.base.eta == 0.4 and c.base.count == 1
    assert c.fixed == {
        "Steps": "30",
        "Eta": "0.4",
        "Sampler": "DDIM",
        "Size": "64x64",
        "Seed": "7",
        "Model": "tiny:ldm",
    }
    assert "Guidance" not in c.fixed


def test_replace_is_the_first_axis():
    c = build_comparison(base(), guidance=[2, 6], replace=["painting", "photo"])
    assert [a.name for a in c.axes] == ["replace", "guidance"]
    assert [cell.request.prompt.split()[1] for cell in c.cells()] == [
        "painting",
        "photo",
        "painting",
        "photo",
    ]


def test_too_many_axes_cells_or_none_are_refused_with_the_numbers():
    with pytest.raises(BadCompareValue) as four:
        build_comparison(
            base(), replace=["painting", "photo"], steps=[1, 2], guidance=[1, 2], eta=[0, 1]
        )
    assert str(four.value) == (
        "At most 3 settings can vary at once; you gave 4: replace, steps, guidance, eta. "
        "Fix one of them to a single value."
    )
    with pytest.raises(BadCompareValue) as many:
        build_comparison(base(), steps=[1, 2, 3], guidance=[1, 2, 3], eta=[0, 1])
    assert str(many.value) == (
        "That is 18 cells (3 x 3 x 2); this server allows at most 16. Give fewer values."
    )
    with pytest.raises(BadCompareValue, match=r"That is 17 cells; this server allows at most 16"):
        build_comparison(base(), steps=list(range(1, 18)))
    with pytest.raises(BadCompareValue, match=r"That is 6 cells \(3 x 2\); .* at most 4\."):
        build_comparison(base(), steps=[1, 2, 3], guidance=[1, 2], max_cells=4)
    # A server can lower the limit, never raise it past 16.
    assert len(build_comparison(base(), steps=list(range(1, 17)), max_cells=99).cells()) == 16
    with pytest.raises(BadCompareValue, match="at most 16"):
        build_comparison(base(), steps=list(range(1, 18)), max_cells=99)
    with pytest.raises(BadCompareValue, match="at least one setting more than one value"):
        build_comparison(base(), steps=[20], guidance=[6])
    with pytest.raises(ValueError, match="seed"):
        build_comparison(base(seed=None), steps=[1, 2])
    assert MAX_CELLS == 16


def test_to_dict_and_from_dict_round_trip_through_json():
    c = build_comparison(
        base(negative_prompt="blurry"),
        replace=["painting", "photo, sharp", ""],
        guidance=[2, 6],
        samplers=["ddim", "dpmpp_2m"],
    )
    again = Comparison.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c
    assert again.cells() == c.cells()
    # Ints given for a float axis compare equal after the JSON trip too.
    assert Comparison.from_dict(json.loads(json.dumps(c.to_dict()))).axes[1].values == (2.0, 6.0)


def test_parameters_carry_the_first_cell_and_the_xyz_types_and_values():
    c = build_comparison(base(), steps=[50, 100], guidance=[2, 6], eta=[0.3, 0.8])
    text = c.parameters()
    assert text == (
        f"{SQUIRREL}\nSteps: 50, Sampler: DDIM, CFG scale: 2, Seed: 7, Size: 64x64, "
        'Model: tiny:ldm, Eta: 0.3, X Type: Steps, X Values: "50,100", Y Type: CFG Scale, '
        'Y Values: "2,6", Z Type: Eta, Z Values: "0.3,0.8"'
    )
    settings = parse_parameters(text)["settings"]
    assert settings["Z Type"] == "Eta" and settings["Y Values"] == "2,6"
    # An A1111 reader gets the first cell back from the grid's text.
    assert request_from_parameters(text) == c.cells()[0].request


def test_parameters_of_replace_keep_commas_inside_items():
    c = build_comparison(
        base(), replace=["painting", "photo, sharp", ""], samplers=["ddim", "dpmpp_2m"]
    )
    settings = parse_parameters(c.parameters(eta=False))["settings"]
    assert settings["X Type"] == "Prompt S/R"
    assert next(csv.reader(io.StringIO(settings["X Values"]))) == ["painting", "photo, sharp", ""]
    assert settings["Y Type"] == "Sampler" and settings["Y Values"] == "DDIM,DPM++ 2M"
    assert "Eta" not in settings


# -- layout -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "shape", "scale"),
    [
        ((64, 64), (2, 2, 1), 4),
        ((256, 256), (2, 2, 1), 1),
        ((100, 64), (2, 1, 1), 4),  # the smaller side decides
        ((100, 100), (2, 2, 1), 3),
        ((512, 512), (4, 4, 1), 1),
        ((64, 64), (16, 1, 1), 4),  # 4096 px of cells: still fits
        ((128, 128), (4, 2, 2), 2),
        ((200, 200), (16, 1, 1), 1),  # 2x would be 6400 px wide
        ((2048, 2048), (4, 4, 1), 1),  # never below 1
    ],
)
def test_scale_brings_small_cells_up_by_a_whole_factor(size, shape, scale):
    assert cell_scale(size, shape) == scale


def noise_image(seed: int, size=(64, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def dark(region: Image.Image) -> int:
    """How many pixels of ``region`` are text-dark."""
    return int((np.asarray(region.convert("L")) < 128).sum())


def two_by_two() -> Comparison:
    return build_comparison(base(), steps=[50, 100], guidance=[2, 6])


def test_cells_are_exactly_the_scaled_pictures_under_their_labels():
    c = two_by_two()
    images = {cell.index: noise_image(cell.index) for cell in c.cells()}
    grid = render_grid(c, images)
    layout = grid_layout(c, (64, 64))
    assert grid.mode == "RGB" and grid.size == (layout.width, layout.height)
    assert layout.scale == 4 and (layout.cell_w, layout.cell_h) == (256, 256)
    assert layout.font_size >= MIN_FONT_SIZE
    for cell in c.cells():
        box = layout.box(cell)
        expected = images[cell.index].resize((256, 256), Image.Resampling.NEAREST)
        assert np.array_equal(np.asarray(grid.crop(box)), np.asarray(expected))
    # Columns left to right, rows top to bottom, nothing overlapping, all inside the grid.
    b = {(cell.x, cell.y): layout.box(cell) for cell in c.cells()}
    assert b[(0, 0)][2] < b[(1, 0)][0] and b[(0, 0)][3] < b[(0, 1)][1]
    assert b[(1, 1)][2] < layout.width and b[(1, 1)][3] < layout.height
    # X labels above each column, Y labels left of each row; the corner stays blank.
    for x in range(2):
        left, top, right, _ = b[(x, 0)]
        assert dark(grid.crop((left, 0, right, top))) > 50
    for y in range(2):
        _, top, _, bottom = b[(0, y)]
        assert dark(grid.crop((0, top, b[(0, y)][0], bottom))) > 50
    assert dark(grid.crop((0, 0, b[(0, 0)][0], b[(0, 0)][1]))) == 0
    assert layout.x_labels == (("Steps: 50",), ("Steps: 100",))
    assert layout.y_labels == (("Guidance: 2",), ("Guidance: 6",))
    assert layout.z_labels == ()


def test_one_axis_is_a_single_row_without_row_labels():
    c = build_comparison(base(), steps=[10, 20, 30])
    layout = grid_layout(c, (64, 64))
    assert (layout.nx, layout.ny, layout.nz) == (3, 1, 1)
    assert layout.y_labels == () and layout.left == layout.pad
    grid = render_grid(c, {cell.index: noise_image(cell.index) for cell in c.cells()})
    box = layout.box(c.cells()[0])
    assert dark(grid.crop((0, box[1], box[0], box[3]))) == 0
    assert grid.size[1] == box[3] + layout.pad


def test_z_sub_grids_sit_side_by_side_each_under_its_title():
    c = build_comparison(base(), steps=[50, 100], guidance=[2, 6], eta=[0.3, 0.8])
    layout = grid_layout(c, (64, 64))
    assert layout.z_labels == (("Eta: 0.3",), ("Eta: 0.8",))
    assert layout.width == layout.left + 2 * layout.sub_width + layout.sub_gap + layout.pad
    grid = render_grid(c, {cell.index: noise_image(cell.index) for cell in c.cells()})
    cells = c.cells()
    first, second = layout.box(cells[0]), layout.box(cells[4])
    assert (cells[4].x, cells[4].y, cells[4].z) == (0, 0, 1)
    assert second[0] - layout.box(cells[1])[2] == layout.sub_gap
    assert second[1] == first[1]
    # Each title is in a band above its sub-grid's X labels.
    title_bottom = layout.pad + layout.line_height
    for z in range(2):
        left = layout.sub_left(z)
        band = grid.crop((left, 0, left + layout.sub_width, title_bottom))
        assert dark(band) > 50
    # Titles differ as their text does.
    a = np.asarray(grid.crop((layout.sub_left(0), 0, first[2] + 256, title_bottom)))
    b = np.asarray(grid.crop((layout.sub_left(1), 0, second[2] + 256, title_bottom)))
    assert not np.array_equal(a, b)


def test_missing_cells_are_grey_boxes_saying_why():
    c = two_by_two()
    images = {0: noise_image(0), 1: None, 3: noise_image(3)}
    grid = render_grid(c, images, missing={1: "cancelled"})
    layout = grid_layout(c, (64, 64))
    cells = c.cells()
    for index in (1, 2):  # 1 cancelled, 2 never arrived
        box = grid.crop(layout.box(cells[index]))
        pixels = np.asarray(box)
        assert (pixels == 205).all(axis=-1).mean() > 0.9
        assert dark(box) > 20  # the reason, written in the middle
    cancelled = np.asarray(grid.crop(layout.box(cells[1])))
    not_drawn = np.asarray(grid.crop(layout.box(cells[2])))
    assert not np.array_equal(cancelled, not_drawn)
    # With no picture at all, cells take the request's size.
    empty = render_grid(c, {})
    assert empty.size == grid.size


def test_the_same_inputs_give_the_same_png_bytes():
    c = build_comparison(base(), steps=[50, 100], guidance=[2, 6], eta=[0.3, 0.8])
    images = {cell.index: noise_image(cell.index) for cell in c.cells()}
    params = c.parameters()
    assert png_bytes(render_grid(c, images), params) == png_bytes(render_grid(c, images), params)


def test_long_labels_wrap_to_the_cell_and_end_in_an_ellipsis():
    face = font(20)
    lines = wrap("a photorealistic image of a squirrel", face, 150, 3)
    assert len(lines) > 1 and all(face.getlength(line) <= 150 for line in lines)
    cjk = wrap("一幅松鼠吃香蕉的画，写实照片风格，高清细节", face, 100, 2)
    assert len(cjk) == 2 and cjk[-1].endswith("…")
    assert all(face.getlength(line) <= 100 for line in cjk)
    assert wrap("", face, 100, 2) == ("",)


def test_cjk_and_latin_labels_render_with_the_bundled_font():
    assert FONT_PATH.is_file()
    prompt = "一幅松鼠 painting"
    c = build_comparison(
        base(prompt=prompt), replace=["painting", "一幅松鼠", "□□□□"], guidance=[2, 6]
    )
    grid = render_grid(c, {cell.index: noise_image(cell.index) for cell in c.cells()})
    layout = grid_layout(c, (64, 64))
    assert layout.x_labels == (("painting",), ("一幅松鼠",), ("□□□□",))

    def label(x: int) -> np.ndarray:
        left, top, right, _ = layout.box_at(x, 0, 0)
        return np.asarray(grid.crop((left, 0, right, top)).convert("L"))

    chinese, boxes = label(1), label(2)
    assert (chinese < 128).sum() > 100
    assert not np.array_equal(chinese, boxes)  # real glyphs, not boxes
    # A character the font lacks draws nothing at all (labels show it as □, see below), so
    # dark pixels are real glyphs.
    assert ink("😀") == 0
    assert ink("松鼠") > 50 and ink("Steps") > 50 and ink("한국어") > 50


def ink(text: str) -> int:
    """Dark pixels where the bundled font writes ``text``."""
    canvas = Image.new("RGB", (200, 40), "white")
    ImageDraw.Draw(canvas).text((4, 4), text, font=font(20), fill="black")
    return dark(canvas)


def test_the_label_font_covers_korean_and_japanese_and_marks_what_it_lacks() -> None:
    from pipeline.grid import visible

    # Hangul of KS X 1001 and kanji of JIS X 0208 (絵 is not in GB 2312) are in the subset.
    assert visible("絵画 한국어 café Ωμεγα") == "絵画 한국어 café Ωμεγα"
    # What it lacks (emoji, rare hangul) shows as a box instead of vanishing from the label.
    assert visible("a 😀 뷁") == "a □ □"
