"""What the loaded model tells users: its own example prompts, and a note when a size differs from
the one it was trained at (issue 14)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from bot.cogs.draw import MAX_DESCRIPTION, Draw, prompt_description
from bot.settings import Settings
from pipeline.engine import DEFAULT_EXAMPLE_PROMPTS, Engine, example_prompts
from pipeline.request import DrawRequest
from pipeline.shapes import data
from pipeline.shapes.model import WEIGHTS_DIR

SHAPES_EXAMPLE = "a large red circle in the centre, white background"


@pytest.fixture(scope="module")
def shapes_engine() -> Engine:
    return Engine.load("tiny:shapes", device="cpu")


@pytest.fixture
def bot_settings(bot_settings):
    """The bot tests here run the preview's model: the shapes model, trained at 64x64."""
    return replace(bot_settings, model="tiny:shapes")


def fields(message) -> list[tuple[str, str]]:
    return [(f.name, f.value) for f in message.embeds[0].fields]


# -- example prompts --------------------------------------------------------------------------


def test_the_shapes_model_suggests_prompts_in_its_own_words(shapes_engine):
    examples = shapes_engine.capabilities.example_prompts
    assert examples[0] == SHAPES_EXAMPLE
    assert examples == example_prompts("tiny:shapes") == example_prompts(str(WEIGHTS_DIR))
    words = set(data.vocabulary())
    trained = {a.caption(p): a for a in data.all_attributes() for p in range(4)}
    for example in examples:
        assert set(example.replace(",", " ").split()) <= words, example
        # Combinations it was trained on, not the ones held out for the quality benchmark.
        assert example in trained and trained[example] not in data.HELD_OUT, example


def test_other_models_suggest_the_classic_example(sd_engine):
    assert sd_engine.capabilities.example_prompts == DEFAULT_EXAMPLE_PROMPTS
    assert example_prompts("CompVis/ldm-text2im-large-256") == DEFAULT_EXAMPLE_PROMPTS
    assert DEFAULT_EXAMPLE_PROMPTS[0] == "a painting of a squirrel eating a banana"


def test_the_prompt_description_fits_discords_limit():
    assert prompt_description((SHAPES_EXAMPLE,)) == f"What to draw, e.g. {SHAPES_EXAMPLE}"
    assert len(prompt_description(example_prompts("tiny:shapes"))) <= MAX_DESCRIPTION == 100
    too_long = "a " * 60
    assert prompt_description((too_long, "a cat")) == "What to draw, e.g. a cat"
    assert prompt_description((too_long,)) == "What to draw"


def test_sync_without_a_model_describes_draw_as_the_running_bot_does():
    # `python -m bot sync` loads no model: the cog asks by the default model's source.
    bot = SimpleNamespace(
        settings=Settings(models="sd=tiny:sd,shapes=tiny:shapes", default_model="shapes")
    )
    cog = Draw(bot)  # type: ignore[arg-type]
    # What Command.to_dict sends for the option (as the sync payload).
    assert cog.draw._params["prompt"].to_dict() == {
        "type": 3,
        "name": "prompt",
        "description": f"What to draw, e.g. {SHAPES_EXAMPLE}",
        "required": True,
        "min_length": 1,
        "max_length": 6000,
    }
    # Only this cog's copy changed: another bot in the process keeps its own.
    assert "squirrel" in str(Draw.draw._params["prompt"].description)


async def test_the_synced_draw_command_suggests_the_models_example(world):
    await world.bot.tree.sync()
    commands = await world.bot.tree.fetch_commands()
    draw = next(c for c in commands if c.name == "draw")
    prompt = next(o for o in draw.options if o.name == "prompt")
    assert prompt.description == f"What to draw, e.g. {SHAPES_EXAMPLE}"


# -- the size note ----------------------------------------------------------------------------


def test_a_size_other_than_the_trained_one_gets_a_note(shapes_engine):
    caps = shapes_engine.capabilities
    assert (caps.default_width, caps.default_height) == (64, 64)
    assert shapes_engine.validate(DrawRequest(SHAPES_EXAMPLE)) == []
    assert shapes_engine.validate(DrawRequest(SHAPES_EXAMPLE, width=64, height=64)) == []
    (note,) = shapes_engine.validate(DrawRequest(SHAPES_EXAMPLE, width=128, height=128))
    assert note.startswith("tiny:shapes was trained at 64x64; at 128x128 ")
    assert "stretched or repeated" in note
    (note,) = shapes_engine.validate(DrawRequest(SHAPES_EXAMPLE, width=64, height=96))
    assert "at 64x96" in note


def test_the_size_note_comes_before_a_long_prompt_note_and_rides_on_the_result(sd_engine):
    request = DrawRequest("a squirrel " * 30, width=128, height=64, steps=1, seed=1)
    notes = sd_engine.validate(request)
    assert len(notes) == 2
    assert notes[0].startswith("tiny:sd was trained at 64x64; at 128x64 ")
    assert "reads only the first 77" in notes[1]
    assert sd_engine.run(request).notes == tuple(notes)


async def test_the_result_says_when_the_size_differs_from_the_trained_one(world):
    r = await world.alice.slash(
        world.channel, "draw", prompt=SHAPES_EXAMPLE, width=128, height=128, steps=2, seed=5
    )
    await world.idle()
    f = fields(r.response)
    assert ("Size", "128x128") in f
    notes = [value for name, value in f if name == "Note"]
    assert len(notes) == 1 and notes[0].startswith("tiny:shapes was trained at 64x64")

    r = await world.alice.slash(world.channel, "draw", prompt=SHAPES_EXAMPLE, steps=2, seed=5)
    await world.idle()
    assert "Note" not in [name for name, _ in fields(r.response)]
