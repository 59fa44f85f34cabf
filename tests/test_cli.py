"""``python -m pipeline``: the command line a user runs, in a real subprocess where it matters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipeline.__main__ import main
from pipeline.pngmeta import read_parameters
from tests.imagecheck import assert_close_images

SQUIRREL = "A painting of a squirrel eating a banana"


@pytest.fixture(autouse=True)
def _cache(model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_CACHE_DIR", str(model_cache))


def test_the_tutorial_command_twice_gives_byte_identical_pngs(tmp_path: Path, model_cache: Path):
    args = [
        sys.executable, "-m", "pipeline", "draw", SQUIRREL, "--model", "tiny:ldm",
        "--steps", "50", "--eta", "0.3", "--guidance", "6", "--seed", "7",
    ]  # fmt: skip
    env = {**os.environ, "EASEL_CACHE_DIR": str(model_cache)}
    outputs = []
    for name in ("a.png", "b.png"):
        out = tmp_path / name
        done = subprocess.run([*args, "-o", str(out)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "seed=7" in done.stdout
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    params = read_parameters(outputs[0])
    assert params == (
        f"{SQUIRREL}\nSteps: 50, Sampler: DDIM, CFG scale: 6, Seed: 7, Size: 64x64, "
        "Model: tiny:ldm, Eta: 0.3"
    )


def test_count_writes_one_file_per_seed_and_from_redraws_them(tmp_path: Path, capsys):
    out = tmp_path / "cat.png"
    assert main(["draw", "a cat", "--model", "tiny:sd", "--steps", "3", "--seed", "40",
                 "--count", "2", "--sampler", "euler_a", "-o", str(out)]) == 0  # fmt: skip
    first, second = tmp_path / "cat-1.png", tmp_path / "cat-2.png"
    assert "Seed: 41" in (read_parameters(second) or "")
    again = tmp_path / "again.png"
    assert main(["draw", "--from", str(second), "--model", "tiny:sd", "-o", str(again)]) == 0
    assert "seed=41" in capsys.readouterr().out
    # Drawn alone, not beside seed 40: the same picture within the README's bound, not the bytes.
    assert_close_images(Image.open(again), Image.open(second))
    with pytest.raises(AssertionError):
        assert_close_images(Image.open(again), Image.open(first))
    # Drawn alone again: byte-identical.
    twice = tmp_path / "twice.png"
    assert main(["draw", "--from", str(again), "--model", "tiny:sd", "-o", str(twice)]) == 0
    assert twice.read_bytes() == again.read_bytes()


def test_guidance_that_runs_no_guidance_redraws_from_its_png(tmp_path: Path):
    out = tmp_path / "dog.png"
    assert main(["draw", "a dog", "--model", "tiny:sd", "--steps", "3", "--seed", "5",
                 "--guidance", "0.5", "-o", str(out)]) == 0  # fmt: skip
    params = read_parameters(out) or ""
    assert "CFG scale: 0.5," in params  # the number asked for, as A1111 readers expect
    again = tmp_path / "again.png"
    assert main(["draw", "--from", str(out), "--model", "tiny:sd", "-o", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["draw", "x", "--model", "tiny:ldm", "--negative", "ugly", "-o", "x.png"],
         "can't use a negative prompt"),
        (["draw", "x", "--model", "tiny:sd", "--width", "65", "-o", "x.png"], "multiple of 8"),
        (["draw", "x", "--model", "tiny:ldm", "--sampler", "heun", "-o", "x.png"],
         "Heun can't be used"),
        (["draw", "x", "--model", "tiny:sd", "--sampler", "magic", "-o", "x.png"],
         "invalid choice"),
        (["draw", "x", "--model", "tiny:sd", "--steps", "many", "-o", "x.png"], "invalid int"),
        (["draw", "--model", "tiny:sd", "-o", "x.png"], "give a PROMPT"),
        (["draw", "x", "--model", "no/such-model", "-o", "x.png"], "not in the local"),
    ],
)  # fmt: skip
def test_bad_options_exit_2_with_a_clear_message(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_samplers_lists_what_the_model_supports(capsys):
    assert main(["samplers", "--model", "tiny:ldm"]) == 0
    out = capsys.readouterr().out
    assert "DPM++ 2M Karras" in out and "ddim" in out and "(default)" in out
    assert "Euler a" not in out


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["draw", "--help"])
    out = capsys.readouterr().out
    for option in ("--model", "--steps", "--guidance", "--eta", "--sampler", "--seed",
                   "--width", "--height", "--count", "--negative", "--output"):  # fmt: skip
        assert option in out


def test_a_variation_redraws_from_its_png_and_strength_zero_is_the_original(tmp_path: Path):
    base = ["--model", "tiny:sd", "--steps", "3", "--seed", "5"]
    plain, varied, again, zero = (tmp_path / n for n in ("p.png", "v.png", "a.png", "z.png"))
    assert main(["draw", "a cat", *base, "-o", str(plain)]) == 0
    assert main(["draw", "a cat", *base, "--variation-seed", "9", "--variation-strength", "0.6",
                 "-o", str(varied)]) == 0  # fmt: skip
    assert "Variation seed: 9, Variation seed strength: 0.6" in (read_parameters(varied) or "")
    assert main(["draw", "--from", str(varied), "--model", "tiny:sd", "-o", str(again)]) == 0
    assert again.read_bytes() == varied.read_bytes()
    assert main(["draw", "a cat", *base, "--variation-seed", "9", "--variation-strength", "0",
                 "-o", str(zero)]) == 0  # fmt: skip
    assert zero.read_bytes() == plain.read_bytes()
    assert varied.read_bytes() != plain.read_bytes()
