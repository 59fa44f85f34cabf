"""Several models (issue 19), end to end: the real bot with two named tiny models (the trained
``tiny:shapes`` and the random-weight ``tiny:sd``), one of them loaded at a time, a real SQLite
file, SimCord as Discord."""

from __future__ import annotations

import io
from dataclasses import replace

import discord
import pytest
from PIL import Image

from bot.app import create_bot
from pipeline.engine import DEFAULT_MODEL
from pipeline.pngmeta import read_parameters, request_from_parameters
from tests.conftest import shut_down


@pytest.fixture
def bot_settings(bot_settings):
    """The shared test settings with two models, shapes the default, one loaded at a time."""
    return replace(
        bot_settings,
        model=DEFAULT_MODEL,
        models="shapes=tiny:shapes,sd=tiny:sd",
        default_model="shapes",
        max_resident_models=1,
    )


def fields(message) -> dict[str, str]:
    return {f.name: f.value for f in message.embeds[0].fields}


async def parameters(message) -> str:
    return read_parameters(await message.attachments[0].read()) or ""


def edits(env) -> list[str]:
    return [
        e.json.get("content") or ""
        for e in env.http_requests
        if e.method == "PATCH" and e.path.endswith("@original") and e.json
    ]


async def test_each_model_draws_its_own_job_and_says_so(world):
    shapes = await world.alice.slash(world.channel, "draw", prompt="a red circle", seed=3)
    sd = await world.bob.slash(world.channel, "draw", prompt="a fox", seed=3, model="sd")
    await world.idle()
    assert fields(shapes.response)["Model"] == "shapes"
    assert fields(sd.response)["Model"] == "sd"
    # The PNG's settings name the model, so the picture can be drawn again from them.
    assert "Model: shapes" in await parameters(shapes.response)
    assert request_from_parameters(await parameters(sd.response)).model == "sd"
    store = world.bot.store
    assert (await store.get_job(1)).request.model == "shapes"
    assert (await store.get_job(2)).request.model == "sd"
    for r in (shapes, sd):
        picture = Image.open(io.BytesIO(await r.response.attachments[0].read()))
        assert picture.size == (64, 64)
    history = await world.alice.slash(world.channel, "history")
    assert "shapes · seed 3" in history.response.embeds[0].description


async def test_autocomplete_lists_the_models_default_first_and_filters(world):
    choices = await world.alice.autocomplete(world.channel, "draw", "model", "")
    assert [c["value"] for c in choices] == ["shapes", "sd"]
    assert choices[0]["name"].startswith("shapes (default")
    typed = await world.alice.autocomplete(world.channel, "draw", "model", "s")
    assert {c["value"] for c in typed} == {"shapes", "sd"}
    only = await world.alice.autocomplete(world.channel, "draw", "model", "sd")
    assert [c["value"] for c in only] == ["sd"]


async def test_models_lists_what_each_supports_and_whether_it_is_loaded(world):
    r = await world.alice.slash(world.channel, "models")
    assert r.ephemeral
    text = r.response.content
    assert "**shapes**" in text and "**sd**" in text and "(the default here)" in text
    shapes_part, sd_part = text.split("**sd**")
    assert "loaded" in shapes_part and "not loaded" in sd_part
    assert "Negative prompt: yes" in sd_part


async def test_an_unknown_model_is_refused_with_the_choices_and_nothing_is_stored(world):
    r = await world.alice.slash(world.channel, "draw", prompt="a cat", model="sdxl")
    assert r.ephemeral
    assert r.response.content == "sdxl isn't available in this server; pick one of: shapes, sd."
    assert await world.bot.store.count_history(world.guild.id) == 0


async def test_a_job_waiting_for_its_model_says_it_is_loading_it(world):
    await world.alice.slash(world.channel, "draw", prompt="a fox", model="sd")
    await world.idle()
    assert "Loading sd…" in edits(world.env)
    assert world.bot.models.resident() == ("sd",)
    assert world.bot.models.placement("shapes") == "unloaded"  # one at a time, on a CPU


async def test_reroll_vary_and_remix_keep_the_jobs_model(world):
    first = await world.alice.slash(world.channel, "draw", prompt="a fox", seed=5, model="sd")
    await world.idle()
    again = await world.bob.slash(world.channel, "reroll", job=1)
    await world.idle()
    assert fields(again.response)["Model"] == "sd"
    ask = await world.alice.click(first.response, custom_id="easel:vary:1:0")
    vary = await world.alice.click(ask.response, label="Vary (Strong)")
    await world.idle()
    assert fields(vary.response)["Model"] == "sd"
    assert [(await world.bot.store.get_job(i)).request.model for i in (1, 2, 3)] == ["sd"] * 3


async def test_one_model_at_a_time_alternates_fairly_and_never_mixes_a_batch(world, monkeypatch):
    """Alice's jobs use the loaded model, Bob's the other. Bob's first job gives up at most 2
    turns to Alice's (the bounded skip); then his model is loaded, and his other jobs go ahead
    of Alice's last while it is."""
    bot = world.bot
    drawn: list[list[tuple[str, str]]] = []
    real = bot.models.run_batch

    def spy(requests, on_step=None):
        drawn.append([(r.prompt, r.model) for r in requests])
        return real(requests, on_step)

    monkeypatch.setattr(bot.models, "run_batch", spy)
    bot.executor.pause()
    first = await world.bob.slash(world.channel, "draw", prompt="bob 1", seed=1, model="sd")
    assert "sd will be loaded for it first." in first.response.content
    for i in (1, 2, 3):
        await world.alice.slash(world.channel, "draw", prompt=f"alice {i}", seed=i)
    for i in (2, 3):
        await world.bob.slash(world.channel, "draw", prompt=f"bob {i}", seed=i, model="sd")
    bot.executor.resume()
    await world.idle()

    for batch in drawn:
        assert len({model for _prompt, model in batch}) == 1  # batching never mixes models
    order = [[prompt for prompt, _model in batch] for batch in drawn]
    # Round-robin alone would draw bob 1 first. The loaded model's jobs go ahead of it twice,
    # no more (bob 1 then draws alone: a batch never jumps the queue); with sd loaded, Bob's
    # other two share a batch ahead of alice 3, which waits one turn for the switch back.
    assert order == [["alice 1"], ["alice 2"], ["bob 1"], ["bob 2", "bob 3"], ["alice 3"]]
    assert edits(world.env).count("Loading sd…") == 1
    assert edits(world.env).count("Loading shapes…") == 1
    assert all(j.status == "done" for j in await bot.store.history(world.guild.id))


async def test_the_servers_allow_list_and_default_model(world):
    admins = world.guild.create_role(
        "Admins", permissions=discord.Permissions(manage_guild=True, manage_messages=True)
    )
    mod = world.guild.add_member(world.env.create_user("boss"), roles=[admins])
    saved = await mod.slash(
        world.channel, "mod settings set", allowed_models="sd", default_model="sd"
    )
    assert saved.ephemeral and "Saved." in saved.response.content
    assert "Allowed models: sd (set here)" in saved.response.content
    refused = await world.alice.slash(world.channel, "draw", prompt="a cat", model="shapes")
    assert refused.ephemeral
    assert refused.response.content == "shapes isn't available in this server; pick one of: sd."
    listed = await world.alice.slash(world.channel, "models")
    assert "**sd**" in listed.response.content and "**shapes**" not in listed.response.content
    choices = await world.alice.autocomplete(world.channel, "draw", "model", "")
    assert [c["value"] for c in choices] == ["sd"]
    # The server's default applies when the member picks none.
    drawn = await world.alice.slash(world.channel, "draw", prompt="a cat", seed=1)
    await world.idle()
    assert fields(drawn.response)["Model"] == "sd"
    # An allow-list that leaves out the default is refused, saying what to change.
    bad = await mod.slash(world.channel, "mod settings set", allowed_models="shapes")
    assert bad.ephemeral and "The default model sd is not among the allowed models" in (
        bad.response.content
    )
    unknown = await mod.slash(world.channel, "mod settings set", allowed_models="sd, sdxl")
    assert "This bot has no model called sdxl" in unknown.response.content
    # Another server is not affected.
    other = world.env.create_guild("Elsewhere")
    room = other.create_text_channel("draw")
    member = other.add_member(world.env.create_user("carol"))
    elsewhere = await member.slash(room, "draw", prompt="a red circle", model="shapes", seed=2)
    await world.idle()
    assert fields(elsewhere.response)["Model"] == "shapes"


async def test_a_removed_models_reroll_is_refused_and_nothing_is_queued(world, bot_settings):
    env = world.env
    await world.alice.slash(world.channel, "draw", prompt="a fox", seed=5, model="sd")
    await world.alice.slash(world.channel, "draw", prompt="a red circle", seed=5)
    await world.idle()
    await shut_down(world.bot)
    fewer = create_bot(replace(bot_settings, models="shapes=tiny:shapes", default_model=""))
    try:
        await env.restart_bot(fewer)  # the operator removed sd from MODELS
        refused = await world.alice.slash(world.channel, "reroll", job=1)
        assert refused.ephemeral
        assert refused.response.content.startswith(
            "Job #1 was drawn with sd, which this bot no longer has"
        )
        again = await world.alice.slash(world.channel, "reroll", job=2)
        await world.idle()
        assert fields(again.response)["Model"] == "shapes"
        assert await fewer.store.count_history(world.guild.id) == 3  # nothing for the refusal
    finally:
        await shut_down(fewer)


async def test_jobs_from_the_one_model_days_find_their_model_by_its_source(world, bot_settings):
    """Before MODELS, a job's model was MODEL's value (``tiny:sd``); named now, it is still
    that model, and a job queued then is drawn with it after the restart."""
    env = world.env
    await shut_down(world.bot)
    single = create_bot(replace(bot_settings, models="", default_model="", model="tiny:sd"))
    named = create_bot(bot_settings)
    try:
        await env.restart_bot(single)
        await world.alice.slash(world.channel, "draw", prompt="a fox", seed=5)
        await world.idle()
        single.executor.pause()
        await world.alice.slash(world.channel, "draw", prompt="an owl", seed=6)
        assert (await single.store.get_job(1)).request.model == "tiny:sd"
        await shut_down(single)
        await env.restart_bot(named)
        await world.idle()
        assert (await named.store.get_job(2)).status == "done"
        again = await world.alice.slash(world.channel, "reroll", job=1)
        await world.idle()
        assert fields(again.response)["Model"] == "sd"
        posted = {m.embeds[0].footer.text: m for m in world.channel.history() if m.embeds}
        assert fields(posted["Job #2"])["Model"] == "sd"
    finally:
        await shut_down(single)
        await shut_down(named)


async def test_models_removed_since_a_server_chose_them_block_nothing(world, bot_settings):
    """A server picked sd; the operator removed it. Drawing falls back to the bot's default,
    a moderator's next change saves (the stale name is dropped), and a comparison queued for
    sd when the bot went down is ended saying why."""
    env = world.env
    admins = world.guild.create_role(
        "Admins", permissions=discord.Permissions(manage_guild=True, manage_messages=True)
    )
    boss = world.guild.add_member(env.create_user("boss"), roles=[admins])
    await boss.slash(world.channel, "mod settings set", default_model="sd", allowed_models="sd")
    world.bot.executor.pause()
    await world.alice.slash(world.channel, "compare", prompt="a fox", steps="2, 3")
    await shut_down(world.bot)
    fewer = create_bot(replace(bot_settings, models="shapes=tiny:shapes", default_model=""))
    try:
        await env.restart_bot(fewer)
        await world.idle()
        ended = [m.content for m in world.channel.history() if "Comparison #1" in m.content]
        assert ended and "its model sd was removed from the bot while it waited" in ended[0]
        saved = await boss.slash(world.channel, "mod settings set", cooldown=5)
        assert "Saved." in saved.response.content
        assert "Default model: shapes (default)" in saved.response.content
        # Its allow-list lost its only model: the bot's default alone, not every model.
        assert "Allowed models: shapes (set here)" in saved.response.content
        drawn = await world.alice.slash(world.channel, "draw", prompt="a red circle", seed=1)
        await world.idle()
        assert fields(drawn.response)["Model"] == "shapes"
    finally:
        await shut_down(fewer)


async def test_a_members_default_may_suit_another_model_they_can_pick(world, bot_settings):
    """The server draws with LDM, which runs no Euler; a member who mostly picks sd may still
    make Euler their default, and a /draw with LDM gives way with a note."""
    env = world.env
    await shut_down(world.bot)
    mixed = create_bot(replace(bot_settings, models="ldm=tiny:ldm,sd=tiny:sd", default_model=""))
    try:
        await env.restart_bot(mixed)
        saved = await world.alice.slash(world.channel, "settings set", sampler="euler")
        assert saved.ephemeral and saved.response.content.startswith("Saved.")
        with_sd = await world.alice.slash(world.channel, "draw", prompt="a fox", model="sd")
        with_ldm = await world.alice.slash(world.channel, "draw", prompt="a fox")
        await world.idle()
        assert fields(with_sd.response)["Sampler"] == "Euler"
        assert fields(with_ldm.response)["Model"] == "ldm"
        assert "Your default sampler Euler can't be used with this model" in str(
            with_ldm.response.embeds[0].to_dict()
        )
    finally:
        await shut_down(mixed)


async def test_model_names_ignore_case_and_a_blank_one_is_answered(world):
    r = await world.alice.slash(world.channel, "draw", prompt="a fox", seed=1, model="SD")
    await world.idle()
    assert fields(r.response)["Model"] == "sd"
    blank = await world.alice.slash(world.channel, "draw", prompt="a fox", model="   ")
    assert blank.ephemeral
    assert blank.response.content.startswith("Give a model's name (/models lists them)")
    assert await world.bot.store.count_history(world.guild.id) == 1


async def test_models_shows_each_models_own_limits_and_a_dm_sees_every_model(world):
    """A server's limits apply to each model within the model's own: a small model (its own
    largest side 96 here, as a smaller model's would be) is not shown the server's 128."""
    from bot.model_menu import describe_models

    admins = world.guild.create_role(
        "Admins", permissions=discord.Permissions(manage_guild=True, manage_messages=True)
    )
    boss = world.guild.add_member(world.env.create_user("boss"), roles=[admins])
    await boss.slash(world.channel, "mod settings set", max_size=128, allowed_models="sd, shapes")
    models = world.bot.models
    small = models.engine("shapes")
    small.capabilities = replace(small.capabilities, max_side=96)
    policies = [await world.bot.jobs.policy(world.guild.id, n) for n in ("shapes", "sd")]
    text = describe_models(models, policies)
    shapes_part, sd_part = text.split("**sd**")
    assert "up to 96x96" in shapes_part and "up to 128x128" in sd_part
    listed = (await world.alice.slash(world.channel, "models")).response.content
    assert "up to 96x96" in listed and "up to 128x128" in listed
    # In a DM no server's allow-list applies.
    carol = world.env.create_user("carol")
    private = await carol.slash("models")
    assert private.ephemeral
    assert "**shapes**" in private.response.content and "**sd**" in private.response.content
