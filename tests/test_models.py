"""Several named models (issue 19) below the bot: parsing MODELS, the settings, ``ModelSet``
loading and evicting real tiny pipelines, loading on the drawing thread, the model hash."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path

import pytest

from bot.settings import Settings, SettingsError
from pipeline.engine import DEFAULT_MODEL, checkpoint_hash
from pipeline.errors import UnsupportedOption
from pipeline.executor import Executor
from pipeline.models import ModelSet, ModelSpec, ModelUnavailable, UnknownModel, parse_models
from pipeline.pngmeta import format_parameters
from pipeline.request import DrawRequest
from pipeline.tiny import tiny_model_path
from tests.imagecheck import assert_same_images


def req(model: str | None, prompt: str = "a lighthouse", **kw) -> DrawRequest:
    return DrawRequest(prompt, **{"steps": 2, "seed": 4, "model": model, **kw})


# -- MODELS and the settings ------------------------------------------------------------


def test_models_are_parsed_in_order_and_mistakes_say_what_to_fix():
    assert parse_models(" sd15=/models/sd15 , shapes=tiny:shapes,") == (
        ModelSpec("sd15", "/models/sd15"),
        ModelSpec("shapes", "tiny:shapes"),
    )
    # A hub id keeps its slash; only the first "=" splits.
    assert parse_models("ldm=CompVis/ldm-text2im-large-256")[0].source == (
        "CompVis/ldm-text2im-large-256"
    )
    for text, message in (
        ("sd15", "entries are name=source"),
        ("SD=x", "lower-case"),
        ("a=x,a=y", "names 'a' twice"),
        (" , ", "MODELS is empty"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_models(text)


def test_settings_name_the_models_and_refuse_what_cannot_work():
    one = Settings(model="tiny:sd")
    assert one.model_specs() == (ModelSpec("tiny:sd", "tiny:sd"),)
    assert one.default_model_name == "tiny:sd"
    two = Settings(models="a=tiny:shapes,b=tiny:sd", default_model="b")
    assert [s.name for s in two.model_specs()] == ["a", "b"] and two.default_model_name == "b"
    assert Settings(models="a=tiny:shapes,b=tiny:sd").default_model_name == "a"
    with pytest.raises(SettingsError, match="Set MODELS or MODEL, not both"):
        Settings(model="tiny:sd", models="a=tiny:shapes")
    with pytest.raises(SettingsError, match="DEFAULT_MODEL=c is not among the models in MODELS"):
        Settings(models="a=tiny:shapes", default_model="c")
    with pytest.raises(SettingsError, match="MAX_RESIDENT_MODELS must be 0"):
        Settings(max_resident_models=-1)
    env = Settings.from_env(
        {"MODELS": "x=tiny:sd", "DEFAULT_MODEL": "x", "MAX_RESIDENT_MODELS": "2"}, dotenv=None
    )
    assert env.model_specs() == (ModelSpec("x", "tiny:sd"),) and env.max_resident_models == 2
    assert Settings().model == DEFAULT_MODEL


# -- ModelSet on real tiny pipelines ----------------------------------------------------


@pytest.fixture
def two(model_cache: Path) -> ModelSet:
    """tiny:sd ("sd", the default) and tiny:ldm ("ldm"), one on the device at a time."""
    specs = [ModelSpec("ldm", "tiny:ldm"), ModelSpec("sd", "tiny:sd")]
    return ModelSet.load(specs, default="sd", device="cpu", cache_dir=model_cache, max_resident=1)


def test_every_model_is_checked_at_start_and_only_the_default_stays_loaded(two: ModelSet):
    assert two.names == ("ldm", "sd")  # as MODELS lists them
    assert two.resident() == ("sd",)
    assert two.placement("ldm") == "unloaded" and two.engine("ldm").pipe is None
    # An unloaded model still checks requests: LDM can't use a negative prompt.
    with pytest.raises(UnsupportedOption, match=r"ldm .* can't use a negative prompt"):
        two.validate(req("ldm", negative_prompt="blurry", guidance=6))
    assert two.resolve(req(None)).model == "sd"
    assert two.resolve(req("ldm")).model == "ldm"
    with pytest.raises(UnknownModel, match="no model called sdxl; pick one of: ldm, sd"):
        two.validate(req("sdxl"))


def test_stored_models_are_found_by_name_or_by_their_source(two: ModelSet):
    assert two.find("sd") == "sd" and two.find("tiny:ldm") == "ldm"
    assert two.find(None) == "sd" and two.find("gone") is None


def test_models_take_turns_and_draw_the_same_after_coming_back(two: ModelSet):
    before = two.run_batch([req("sd")])[0].images
    assert two.needs_loading(req("ldm")) == "ldm" and two.needs_loading(req("sd")) is None
    two.run_batch([req("ldm")])  # brings ldm in: sd gives way
    assert two.resident() == ("ldm",) and two.placement("sd") == "unloaded"
    # An upscale needs no model: the shared upscaler draws it.
    assert two.needs_loading(req("sd", task="upscale", init_image="x.png")) is None
    after = two.run_batch([req("sd")])[0].images  # read from the disk again
    assert two.resident() == ("sd",)
    assert_same_images(before, after)


def test_two_resident_models_evict_the_least_recently_used(model_cache: Path):
    specs = [ModelSpec(n, f"tiny:{n}") for n in ("sd", "ldm", "shapes")]
    models = ModelSet.load(specs, device="cpu", cache_dir=model_cache, max_resident=2)
    assert set(models.resident()) == {"sd", "shapes"}  # the default (sd) stays; shapes was last
    models.ensure("sd")
    models.ensure("ldm")  # shapes was used least recently
    assert models.resident() == ("ldm", "sd") and models.placement("shapes") == "unloaded"


def test_a_model_that_cannot_come_back_fails_its_jobs_with_a_message(model_cache, tmp_path):
    folder = tmp_path / "mine"
    shutil.copytree(tiny_model_path("sd", model_cache), folder)
    specs = [ModelSpec("mine", str(folder)), ModelSpec("ldm", "tiny:ldm")]
    models = ModelSet.load(specs, default="ldm", device="cpu", max_resident=1)
    shutil.rmtree(folder)  # the operator's disk lost it after the start

    async def scenario():
        ex = Executor(models, max_batch=1)
        ex.pause()  # both queued before either starts: the loaded model's job goes first
        loading: list[str] = []
        done = []
        ex.submit(req("mine"), user_id=1, on_loading=loading.append, on_done=done.append)
        ex.submit(req("ldm"), user_id=2, on_done=done.append)
        ex.resume()
        await ex.wait_idle()
        ex.close()
        return loading, done

    loading, done = asyncio.run(scenario())
    assert loading == ["mine"]
    assert [o.request.model for o in done] == ["ldm", "mine"]
    by_model = {o.request.model: o for o in done}
    assert by_model["mine"].status == "failed"
    assert "The model mine could not be loaded just now" in by_model["mine"].message
    assert by_model["ldm"].status == "done"  # the others go on
    assert isinstance(by_model["mine"].error, ModelUnavailable)
    # ldm gave way before the failed load (two must never need the memory at once); it
    # comes back for its next job.
    assert models.resident() == ()
    models.run_batch([req("ldm")])
    assert models.resident() == ("ldm",)


# -- the model hash ---------------------------------------------------------------------


def test_a_checkpoint_file_has_a1111s_hash_and_the_png_says_it(tmp_path):
    checkpoint = tmp_path / "mine.safetensors"
    checkpoint.write_bytes(b"not really weights" * 1000)
    expected = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:10]
    cache = tmp_path / "cache"
    assert checkpoint_hash(str(checkpoint), cache_dir=cache) == expected
    assert checkpoint_hash(str(tmp_path), cache_dir=cache) is None
    assert checkpoint_hash("tiny:sd", cache_dir=cache) is None
    # Kept, so the next start reads no gigabytes; a changed file is hashed again.
    assert expected in (cache / "checkpoint-hashes.json").read_text()
    checkpoint.write_bytes(b"other weights" * 2000)
    changed = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:10]
    assert checkpoint_hash(str(checkpoint), cache_dir=cache) == changed != expected
    text = format_parameters(
        DrawRequest("a fox", seed=1, width=64, height=64, sampler="pndm", model="mine"),
        model_hash=expected,
    )
    assert f"Size: 64x64, Model hash: {expected}, Model: mine" in text


# -- on a GPU: evicted weights wait in CPU memory while there is room ----------------------


def test_evicted_models_wait_in_cpu_memory_while_it_has_room(model_cache, monkeypatch, sd_engine):
    """No GPU here: the device is named "cpu:0", which the engine does not take for the CPU,
    so eviction takes the GPU's path (moving the weights to "cpu"). The machine's free memory
    is a budget set by the test, less what the copies waiting in it take: room for one."""
    import pipeline.models as models_module
    from pipeline.engine import Engine

    def on_gpu(source: str, **kw) -> Engine:
        engine = Engine.load(source, **{**kw, "device": "cpu"})
        gpu = Engine(engine.pipe, engine.source, device="cpu:0", name=kw.get("name"))
        gpu.pipe.to("cpu:0")
        engines[gpu.model] = gpu
        return gpu

    size = sd_engine.weight_bytes()
    budget = {"bytes": models_module.CPU_MEMORY_HEADROOM + size * 3 // 2}
    specs = [ModelSpec(n, "tiny:sd") for n in ("a", "b", "c")]
    engines: dict[str, Engine] = {}

    def free() -> int:
        waiting = sum(e.weight_bytes() for e in engines.values() if e.placement == "cpu")
        return budget["bytes"] - waiting

    monkeypatch.setattr(models_module, "available_cpu_memory", free)
    models = ModelSet.load(
        specs, default="c", device="cpu:0", cache_dir=model_cache, max_resident=1, loader=on_gpu
    )
    # a waited in CPU memory until b needed its room: one copy fits.
    assert [models.placement(n) for n in "abc"] == ["unloaded", "cpu", "device"]
    models.ensure("a")  # c gives way: b (waiting longest) leaves CPU memory for it
    assert [models.placement(n) for n in "abc"] == ["device", "unloaded", "cpu"]
    # c's copy, about to come back, is not dropped for a's; both would be in CPU memory for a
    # moment, and there is room for one, so a is dropped.
    models.ensure("c")
    assert [models.placement(n) for n in "abc"] == ["unloaded", "unloaded", "device"]
    budget["bytes"] = 10 * size + models_module.CPU_MEMORY_HEADROOM
    models.ensure("b")  # room again: c waits in CPU memory
    assert [models.placement(n) for n in "abc"] == ["unloaded", "device", "cpu"]


def test_a_model_that_fails_halfway_back_leaves_nothing_on_the_device(model_cache):
    """A move back to the GPU that fails midway (out of memory, say) must not leave parts of
    the model there that no eviction knows about ("cpu:0" stands in for the GPU, as above)."""
    from pipeline.engine import Engine

    loaded = Engine.load("tiny:sd", device="cpu", cache_dir=model_cache)
    engine = Engine(loaded.pipe, loaded.source, device="cpu:0", name="sd")
    engine.evict(keep_in_cpu_memory=True)
    assert engine.placement == "cpu"

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated: no GPU here)")

    engine.pipe.to = out_of_memory
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.bring_back()
    assert engine.placement == "unloaded" and engine.pipe is None and engine.weight_bytes() == 0


async def test_the_newest_progress_waits_for_the_edit_in_progress_and_is_shown():
    """Discord edits take a while; "Loading sd…" sent during the edit of "Drawing job #1…"
    must still be shown (the ones between are skipped, the newest never)."""
    from bot.delivery import Delivery

    shown: list[str] = []
    release = asyncio.Event()

    class Interaction:  # stands in for discord.py's: only what status() uses
        def is_expired(self) -> bool:
            return False

        async def edit_original_response(self, *, content: str) -> None:
            shown.append(content)
            await release.wait()

    delivery = Delivery(None, channel_id=1, user_id=2, interaction=Interaction(), locale="en-US")  # type: ignore[arg-type]
    first = asyncio.create_task(delivery.status("Drawing job #1…"))
    await asyncio.sleep(0)
    await delivery.status("Drawing… 1/4")  # skipped: a newer one comes before the edit ends
    await delivery.status("Loading sd…")
    release.set()
    await first
    assert shown == ["Drawing job #1…", "Loading sd…"]


def test_a_servers_limits_never_exceed_the_chosen_models_own(sd_engine):
    """Limits set against the server's default model (a larger one, say) still fit a smaller
    model: a member's default size is then brought within it, not refused."""
    from dataclasses import replace

    from bot.policy import Policy
    from bot.store import GuildSettings

    caps = replace(sd_engine.capabilities, model="small", max_side=128, max_steps=40, max_count=2)
    stored = GuildSettings(max_side=1536, max_steps=150, max_count=4)
    policy = Policy.build(stored, caps, Settings(model="tiny:sd"), models=("big", "small"))
    assert (policy.max_side, policy.max_steps, policy.max_count) == (128, 40, 2)
    assert policy.model == "small" and policy.models == ("big", "small")
