"""``python -m pipeline compare``: a grid that is the same every run, cells that redraw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.__main__ import main
from pipeline.compare import build_comparison
from pipeline.grid import grid_layout
from pipeline.pngmeta import parse_parameters, read_parameters, request_from_parameters
from tests.imagecheck import assert_same_images

PROMPT = "a cat on a red sofa"
GRID = ["compare", PROMPT, "--model", "tiny:sd", "--steps", "2,3", "--guidance", "1,4",
        "--seed", "11"]  # fmt: skip


@pytest.fixture(autouse=True)
def _cache(model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_CACHE_DIR", str(model_cache))


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    """One 2x2 grid with its cells, drawn once for the tests that read it."""
    folder = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EASEL_CACHE_DIR", str(model_cache))
        argv = [*GRID, "-o", str(folder / "grid.png"), "--cells", str(folder / "cells")]
        assert main(argv) == 0
    return folder


def test_the_grid_is_byte_identical_when_drawn_again(drawn: Path, tmp_path: Path, capsys):
    again = tmp_path / "again.png"
    assert main([*GRID, "-o", str(again)]) == 0
    out = capsys.readouterr()
    assert f"{again}  seed=11  (2 x 2 grid)" in out.out
    assert "cell 4/4" in out.err  # the progress bar names the cell it is on
    assert again.read_bytes() == (drawn / "grid.png").read_bytes()


def test_the_grid_carries_xy_types_and_values(drawn: Path):
    text = read_parameters(drawn / "grid.png") or ""
    settings = parse_parameters(text)["settings"]
    assert text.startswith(f"{PROMPT}\n")
    assert settings["X Type"] == "Steps" and settings["X Values"] == "2,3"
    assert settings["Y Type"] == "CFG Scale" and settings["Y Values"] == "1,4"
    assert settings["Seed"] == "11" and settings["Model"] == "tiny:sd"
    assert "Z Type" not in settings


def test_each_cell_png_redraws_itself_and_sits_in_the_grid(drawn: Path, tmp_path: Path):
    cells = sorted((drawn / "cells").glob("*.png"))
    assert [p.name for p in cells] == ["cell-01.png", "cell-02.png", "cell-03.png", "cell-04.png"]
    requests = [request_from_parameters(read_parameters(p) or "") for p in cells]
    assert [(r.steps, r.guidance) for r in requests] == [(2, 1.0), (3, 1.0), (2, 4.0), (3, 4.0)]
    assert {r.seed for r in requests} == {11}

    # Steps and guidance differ cell to cell, so no two cells shared a batch: a cell is what
    # `draw` makes alone, pixel for pixel.
    redrawn = tmp_path / "redrawn.png"
    argv = ["draw", "--from", str(cells[2]), "--model", "tiny:sd", "-o", str(redrawn)]
    assert main(argv) == 0
    assert_same_images(Image.open(redrawn), Image.open(cells[2]))

    comparison = build_comparison(requests[0], steps=[2, 3], guidance=[1.0, 4.0])
    layout = grid_layout(comparison, (64, 64))
    grid = Image.open(drawn / "grid.png").convert("RGB")
    for cell, path in zip(comparison.cells(), cells, strict=True):
        picture = Image.open(path).convert("RGB")
        scaled = picture.resize((layout.cell_w, layout.cell_h), Image.Resampling.NEAREST)
        assert np.array_equal(np.asarray(grid.crop(layout.box(cell))), np.asarray(scaled))


def test_replace_compares_wordings(tmp_path: Path, capsys):
    out = tmp_path / "words.png"
    argv = ["compare", PROMPT, "--model", "tiny:sd", "--steps", "2", "--seed", "3",
            "--replace", 'red sofa, "blue, soft chair"', "-o", str(out),
            "--cells", str(tmp_path / "cells")]  # fmt: skip
    assert main(argv) == 0
    assert "(2 grid)" in capsys.readouterr().out
    settings = parse_parameters(read_parameters(out) or "")["settings"]
    assert settings["X Type"] == "Prompt S/R"
    assert settings["X Values"] == 'red sofa,"blue, soft chair"'
    second = read_parameters(tmp_path / "cells" / "cell-02.png") or ""
    assert second.startswith("a cat on a blue, soft chair\n")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--steps", "abc"], 'error: steps: "abc" is not a number'),
        (["--guidance", "2,2"], "guidance lists 2 twice"),
        (["--eta", "0-1 (+0)"], 'eta: "0-1 (+0)" has a step of 0'),
        (["--steps", "0,5"], "in the cell Steps: 0: Steps must be between 1 and 150; got 0."),
        (["--steps", "2,3", "--width", "65"], "Width must be a multiple of 8"),
        (["--sampler", "ddim,magic"], 'sampler: "magic" is not a sampler'),
        (["--replace", "dog, bird"], 'replace: the first item, "dog", must appear in the prompt'),
        (["--steps", "1-17"], "That is 17 cells; this server allows at most 16."),
        (["--steps", "3"], "at least one setting more than one value"),
        (["--steps", "2,3", "--eta", "0.5,1", "--sampler", "euler"], "Eta only changes images"),
        (["--replace", "cat, dog", "--steps", "2,3", "--guidance", "1,2", "--eta", "0,1"],
         "At most 3 settings can vary at once; you gave 4"),
    ],
)  # fmt: skip
def test_bad_values_exit_2_naming_the_option(options, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["compare", PROMPT, "--model", "tiny:sd", *options, "-o", "grid.png"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "grid.png").exists()


def test_help_describes_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    for option in ("--model", "--negative", "--steps", "--guidance", "--eta", "--sampler",
                   "--replace", "--seed", "--width", "--height", "--output", "--cells",
                   "--device", "10-50 (+10)", "10-50 [5]"):  # fmt: skip
        assert option in out
