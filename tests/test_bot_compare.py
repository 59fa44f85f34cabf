"""/compare end to end: the real bot, the real tiny model, SimCord as Discord."""

from __future__ import annotations

import io

import discord
import numpy as np
from PIL import Image

from bot.comparisons import comparison_of
from pipeline.grid import grid_layout
from pipeline.pngmeta import read_parameters, request_from_parameters
from tests.conftest import shut_down, until


def fields(message) -> dict[str, str]:
    return {f.name: f.value for f in message.embeds[0].fields}


async def pixels(attachment) -> np.ndarray:
    with Image.open(io.BytesIO(await attachment.read())) as image:
        return np.asarray(image.convert("RGB"))


def pause_after_first_batch(executor) -> list[list[int]]:
    """Hold everything back once the first batch starts; returns the batches started."""
    started: list[list[int]] = []
    record = executor.on_start

    def hook(tickets: list[int]) -> None:
        started.append(list(tickets))
        executor.pause()
        record(tickets)

    executor.on_start = hook
    return started


async def cell_of(world, grid: np.ndarray, compare_id: int, x: int, y: int) -> np.ndarray:
    """The cell at column ``x``, row ``y`` of a posted grid, at the cell's own size."""
    comparison = comparison_of(await world.bot.store.get_job(compare_id))
    base = comparison.base
    layout = grid_layout(comparison, (base.width, base.height))
    cell = next(c for c in comparison.cells() if (c.x, c.y) == (x, y))
    left, top, right, bottom = layout.box(cell)
    s = layout.scale
    return grid[top:bottom:s, left:right:s]


async def test_a_2x2_grid_holds_exactly_the_drawings_draw_makes(world):
    r = await world.alice.slash(
        world.channel, "compare", prompt="a squirrel", steps="3, 6", guidance="2, 6", seed=7
    )
    await world.idle()
    msg = r.response
    assert not msg.ephemeral
    f = fields(msg)
    assert f["Columns (X)"] == "Steps: 3, 6" and f["Rows (Y)"] == "Guidance: 2, 6"
    assert f["Seed"] == "7" and f["Model"] == "tiny:sd"
    footer = msg.embeds[0].footer.text
    assert footer.startswith("Job #1 · comparison of 4 cells (jobs #2-#5)")
    # The settings all cells share are in the footer; the ones that vary are not.
    assert "every cell: Sampler PNDM, Size 64x64" in footer
    assert "Steps" not in footer and "Guidance" not in footer
    (attachment,) = msg.attachments  # one grid, not four pictures
    data = await attachment.read()
    text = read_parameters(data) or ""
    assert 'X Type: Steps, X Values: "3,6", Y Type: CFG Scale, Y Values: "2,6"' in text
    grid = await pixels(attachment)
    assert grid.shape[0] > 2 * 256 and grid.shape[1] > 2 * 256  # 64 px cells shown 4x

    d = await world.bob.slash(
        world.channel, "draw", prompt="a squirrel", steps=6, guidance=2.0, seed=7
    )
    await world.idle()
    drawn = await pixels(d.response.attachments[0])
    assert np.array_equal(await cell_of(world, grid, 1, x=1, y=0), drawn)
    assert not np.array_equal(await cell_of(world, grid, 1, x=0, y=0), drawn)

    store = world.bot.store
    cells = await store.comparison_cells(1)
    assert [(c.steps, c.guidance, c.seed) for c in cells] == [
        (3, 2.0, 7),
        (6, 2.0, 7),
        (3, 6.0, 7),
        (6, 6.0, 7),
    ]
    assert all(c.status == "done" and c.message_id == msg.id for c in cells)
    assert (await store.get_job(1)).status == "done"
    edits = [
        e.json.get("content") or ""
        for e in world.env.http_requests
        if e.method == "PATCH" and isinstance(e.json, dict)
    ]
    assert any(t.startswith("Comparing… cell 1 of 4 (step ") for t in edits), edits
    assert any(t.startswith("Comparing… cell 4 of 4 (step ") for t in edits), edits


async def test_purge_removes_a_comparison_and_its_cells(world):
    await world.alice.slash(world.channel, "compare", prompt="a fox", steps="2, 3")
    await world.idle()
    store = world.bot.store
    assert [m for m in world.channel.history() if m.attachments]
    paths = [c.images[0][0] for c in await store.comparison_cells(1)]
    paths.append((await store.get_job(1)).images[0][0])
    assert all(p.is_file() for p in paths)
    p = await world.mod.slash(world.channel, "mod purge", user=world.alice)
    await world.mod.click(p.response, label="Yes, delete them")
    await world.idle()
    audit = (await store.purges(world.guild.id))[0]
    # One grid message for the comparison and its cells: deleted once, not found twice more.
    assert (audit.jobs, audit.messages_deleted, audit.messages_missing) == (3, 1, 0)
    assert not [m for m in world.channel.history() if m.attachments]  # the grid is gone
    assert await store.get_job(1) is None and await store.comparison_cells(1) == []
    assert not any(p.is_file() for p in paths)


async def test_purge_stops_a_queued_comparison(world):
    world.bot.executor.pause()
    queued = await world.alice.slash(world.channel, "compare", prompt="a cat", steps="2, 3")
    r = await world.mod.slash(world.channel, "mod purge", user=world.alice)
    await world.mod.click(r.response, label="Yes, delete them")
    assert world.bot.executor.pending() == 0
    world.bot.executor.resume()
    await world.idle()
    assert queued.response.content == "Comparison #1 was removed by a moderator."
    assert await world.bot.store.get_job(1) is None


async def test_too_many_cells_and_bad_values_are_refused_privately_with_nothing_stored(world):
    store = world.bot.store
    cases = [
        ({"steps": "1-17"}, "17 cells"),
        ({"guidance": "abc"}, 'guidance: "abc" is not a number'),
        ({"steps": "4, 4"}, "twice"),
        ({"steps": "4, 200"}, "“Steps: 200”"),
        ({"width": 100, "steps": "2, 3"}, "multiple of 8"),
        ({"sampler": "ddim, warp drive"}, "warp drive"),
        ({"replace": "dog, cat", "steps": "2"}, "must appear in the prompt"),
        (
            {"steps": "2, 3", "guidance": "1, 2", "eta": "0, 1", "sampler": "ddim, pndm"},
            "At most 3",
        ),
        ({"steps": "5"}, "at least one setting"),
    ]
    for options, answer in cases:
        r = await world.alice.slash(world.channel, "compare", prompt="a squirrel", **options)
        await world.idle()
        assert r.ephemeral, options
        assert answer in r.response.content, (options, r.response.content)
    assert await store.get_job(1) is None  # nothing recorded, nothing queued
    assert world.bot.executor.pending() == 0


async def test_a_server_limit_applies_to_every_cell_and_to_the_cell_count(world):
    admins = world.guild.create_role(
        "Admins", permissions=discord.Permissions(manage_guild=True, manage_messages=True)
    )
    boss = world.guild.add_member(world.env.create_user("boss"), roles=[admins])
    s = await boss.slash(world.channel, "mod settings set", max_steps=10, max_compare_cells=4)
    assert "Max compare cells: 4 (set here)" in s.response.content
    r = await world.alice.slash(world.channel, "compare", prompt="a fox", steps="4, 20")
    assert r.ephemeral and "“Steps: 20”" in r.response.content
    assert "at most 10 steps" in r.response.content
    r = await world.alice.slash(
        world.channel, "compare", prompt="a fox", steps="2, 3, 4", guidance="2, 6"
    )
    assert r.ephemeral and "6 cells" in r.response.content and "at most 4" in r.response.content
    await world.idle()
    assert await world.bot.store.get_job(1) is None


async def test_cells_take_turns_with_other_members_drawings(world):
    executor = world.bot.executor
    started: list[list[int]] = []
    record = executor.on_start

    def hook(tickets: list[int]) -> None:
        started.append(list(tickets))
        record(tickets)

    executor.on_start = hook
    executor.pause()
    await world.alice.slash(world.channel, "compare", prompt="a fox", steps="2, 3", guidance="2, 6")
    b1 = await world.bob.slash(world.channel, "draw", prompt="a hen")
    b2 = await world.bob.slash(world.channel, "draw", prompt="a cow")
    assert b1.response.content.startswith("Queued as job #6: 1 ahead of you")
    executor.resume()
    await world.idle()
    # Bob's drawings start after one cell each, not after the whole grid.
    assert started == [[2], [6], [3], [7], [4], [5]]
    assert b2.response.embeds and b1.response.embeds


async def test_a_comparison_counts_once_against_the_queue_cap(world):
    world.bot.executor.pause()
    r = await world.alice.slash(world.channel, "compare", prompt="a fox", steps="2, 3, 4")
    assert "Queued as comparison #1 (3 cells)" in r.response.content
    for prompt in ("a hen", "a cow"):
        r = await world.alice.slash(world.channel, "draw", prompt=prompt)
        assert not r.ephemeral
    r = await world.alice.slash(world.channel, "draw", prompt="a pig")
    assert r.ephemeral and "limit is 3" in r.response.content
    q = await world.alice.slash(world.channel, "queue")
    assert "job #2 (cell of comparison #1)" in q.response.content
    world.bot.executor.resume()
    await world.idle()


async def test_cancel_mid_grid_posts_the_cells_done_and_marks_the_others(world):
    executor = world.bot.executor
    started = pause_after_first_batch(executor)
    r = await world.alice.slash(
        world.channel, "compare", prompt="a fox", steps="2, 3", guidance="2, 6"
    )
    store = world.bot.store

    async def first_cell_done() -> bool:
        return (await store.get_job(2)).status == "done"

    await until(world, first_cell_done)
    c = await world.alice.slash(world.channel, "cancel")
    assert c.ephemeral and "Cancelled 1 comparison" in c.response.content
    await world.idle()
    assert started == [[2]]
    msg = r.response
    assert msg.attachments and "3 cells of 4 not drawn" in str(fields(msg))
    assert [c.status for c in await store.comparison_cells(1)] == [
        "done",
        "cancelled",
        "cancelled",
        "cancelled",
    ]
    grid = await pixels(msg.attachments[0])
    blank = await cell_of(world, grid, 1, x=1, y=0)
    assert (blank.std(axis=(0, 1)) < 40).all()  # a grey box with a word, not a picture
    menu = msg.components[0]["components"][0]
    assert [o["value"] for o in menu["options"]] == ["2"]  # only drawn cells can be opened


async def test_cells_are_in_history_open_privately_and_reroll(world):
    r = await world.alice.slash(
        world.channel, "compare", prompt="a fox", steps="2, 3", guidance="2, 6", seed=9
    )
    await world.idle()
    grid_msg = r.response
    h = await world.alice.slash(world.channel, "history")
    text = h.response.embeds[0].description
    assert "**#1** 🔳 comparison: a fox" in text
    assert "**#3** a fox" in text and "cell of comparison #1" in text

    opened = await world.bob.select(grid_msg, ["3"])
    assert opened.ephemeral
    card = opened.response
    assert card.embeds[0].footer.text == "Job #3"
    assert fields(card)["Steps"] == "3" and fields(card)["Guidance"] == "2"
    cell_png = await card.attachments[0].read()
    again = request_from_parameters(read_parameters(cell_png) or "")
    assert (again.steps, again.guidance, again.seed) == (3, 2.0, 9)  # --from redraws it

    re = await world.bob.click(card, label="Reroll")
    await world.idle()
    rerolled = await world.bot.store.get_job(6)
    assert rerolled.parent_job_id == 3 and rerolled.kind == "draw"
    assert (rerolled.steps, rerolled.guidance) == (3, 2.0)
    assert re.response.embeds[0].footer.text == "Job #6"

    exact = await world.alice.slash(world.channel, "reroll", job=4, seed=9)
    await world.idle()
    cell4 = await world.bot.store.get_job(4)
    with Image.open(cell4.images[0][0]) as stored:
        assert np.array_equal(
            np.asarray(stored.convert("RGB")), await pixels(exact.response.attachments[0])
        )

    whole = await world.bob.click(grid_msg, label="Reroll")
    await world.idle()
    assert whole.response.embeds[0].footer.text.startswith("Job #8 · comparison of 4 cells")
    assert (await world.bot.store.get_job(8)).parent_job_id == 1


async def test_deleting_the_grid_takes_its_cells_with_it(world):
    r = await world.alice.slash(world.channel, "compare", prompt="a fox", steps="2, 3")
    await world.idle()
    opened = await world.bob.select(r.response, ["2"])  # bob keeps a cell open privately
    await world.alice.click(r.response, label="Delete")
    store = world.bot.store
    assert all(c.deleted for c in [await store.get_job(1), *await store.comparison_cells(1)])
    refused = await world.bob.click(opened.response, label="Reroll")
    assert refused.ephemeral and "no job #2 here that you can reroll" in refused.response.content
    mine = await world.alice.slash(world.channel, "reroll", job=2)  # its requester still can
    await world.idle()
    assert not mine.ephemeral


async def test_a_comparison_interrupted_by_a_crash_finishes_after_restart(world, make_bot):
    env, old = world.env, world.bot
    started = pause_after_first_batch(old.executor)
    await world.alice.slash(world.channel, "compare", prompt="a fox", steps="2, 3", guidance="2, 6")

    async def first_cell_done() -> bool:
        return (await old.store.get_job(2)).status == "done"

    await until(world, first_cell_done)
    assert started == [[2]]
    await shut_down(old)  # the process dies with three cells to go
    new = make_bot()
    await env.restart_bot(new)
    await world.idle()
    posted = [m for m in world.channel.history() if m.embeds]
    assert len(posted) == 1 and posted[0].embeds[0].footer.text.startswith("Job #1")
    assert posted[0].content == f"<@{world.alice.id}>"
    cells = await new.store.comparison_cells(1)
    assert [c.status for c in cells] == ["done"] * 4
    assert [c.attempts for c in cells] == [1, 1, 1, 1]  # the first cell was not drawn again
    again = make_bot()
    await new.executor.wait_idle()
    await shut_down(new)
    await env.restart_bot(again)
    await world.idle()
    assert len([m for m in world.channel.history() if m.embeds]) == 1


async def test_sampler_autocomplete_completes_the_last_item(world):
    choices = await world.alice.autocomplete(world.channel, "compare", "sampler", "ddim, eul")
    names = [c["name"] for c in choices]
    assert names and all(n.startswith("ddim, Euler") for n in names)
    assert all(c["value"].startswith("ddim, euler") for c in choices)


async def test_long_wordings_full_of_markdown_still_post(world):
    items = [f'"dog_with_long_hair_{i:02d}_{"_" * 40}"' for i in range(15)]
    r = await world.alice.slash(
        world.channel, "compare", prompt="a cat", replace=", ".join(["cat", *items]), steps="1"
    )
    await world.idle()
    assert r.response.attachments, r.response.content  # 16 cells, one grid
    assert all(len(f.value) <= 1024 for f in r.response.embeds[0].fields)


async def test_a_grid_that_cannot_be_made_ends_the_comparison(world, monkeypatch):
    # Stand-in for a fault CI can't cause on demand (memory or disk running out while rendering).
    import bot.comparisons

    def broken(*args, **kwargs):
        raise MemoryError("no room for the grid")

    monkeypatch.setattr(bot.comparisons, "render_grid", broken)
    r = await world.alice.slash(world.channel, "compare", prompt="a fox", steps="1, 2")
    await world.idle()
    assert r.response.content.startswith("⚠️ Comparison #1 failed: its grid could not be made")
    assert (await world.bot.store.get_job(1)).status == "failed"
    assert await world.bot.store.unfinished_jobs() == []  # a restart does not try again


async def test_a_cell_picture_lost_before_a_restart_is_marked_not_fatal(world, make_bot):
    env, old = world.env, world.bot
    pause_after_first_batch(old.executor)
    await world.alice.slash(world.channel, "compare", prompt="a fox", steps="2, 3", guidance="2, 6")

    async def first_cell_done() -> bool:
        return (await old.store.get_job(2)).status == "done"

    await until(world, first_cell_done)
    lost = (await old.store.get_job(2)).images[0][0]
    await shut_down(old)
    lost.unlink()  # someone cleaned the images folder while the bot was down
    new = make_bot()
    await env.restart_bot(new)
    await world.idle()
    (grid,) = [m for m in world.channel.history() if m.attachments]
    assert "1 cell of 4 not drawn" in str(fields(grid))
    assert [c.status for c in await new.store.comparison_cells(1)] == ["done"] * 4


async def test_what_the_axes_leave_out_comes_from_the_members_settings_as_in_draw(world):
    await world.alice.slash(world.channel, "settings set", steps=3, guidance=4.5, count=3)
    world.bot.executor.pause()  # only what is queued matters here
    await world.alice.slash(world.channel, "compare", prompt="a fox", sampler="ddim, pndm")
    cells = await world.bot.store.comparison_cells(1)
    assert [c.request.sampler for c in cells] == ["ddim", "pndm"]
    # Steps and guidance are the member's defaults; one picture per cell, whatever their count.
    assert {(c.request.steps, c.request.guidance, c.request.count) for c in cells} == {(3, 4.5, 1)}
