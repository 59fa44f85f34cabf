"""One line per job for history listings (/history, /mod history)."""

from __future__ import annotations

from bot.render import shorten
from bot.store import JobRecord
from bot.text import plain
from pipeline.samplers import sampler_label


def describe_record(record: JobRecord, *, show_requester: bool = False) -> str:
    """A history entry for a job: number, prompt, settings, when, where it was posted.

    ``show_requester`` names who asked (for moderators' listings of everyone's jobs).
    """
    sampler = sampler_label(record.sampler)
    when = f"<t:{int(record.created_at)}:R>"
    link = f" · [message]({record.jump_url})" if record.jump_url and not record.deleted else ""
    status = "" if record.status == "done" else f" · {record.status}"
    deleted = f" · 🗑️ deleted by <@{record.deleted_by}>" if record.deleted else ""
    withheld = f" · 🔞 {record.withheld} withheld" if record.withheld else ""
    by = f" · by <@{record.user_id}>" if show_requester else ""
    if record.kind == "compare":
        # Its settings vary by cell: the grid's own entry says what it is, its cells the rest.
        return (
            f"**#{record.id}** 🔳 comparison: {plain(shorten(record.prompt, 50))}\n"
            f"seed {record.seed} · {when}{by}{status}{link}{deleted}"
        )
    cell = f" · cell of comparison #{record.compare_id}" if record.compare_id else ""
    if record.kind == "vary" and record.parent_job_id:
        cell += f" · variation of #{record.parent_job_id}"
    elif record.kind == "upscale" and record.parent_job_id:
        cell += f" · upscaled from #{record.parent_job_id}"
    elif record.kind == "remix" and record.parent_job_id:
        cell += f" · remix of #{record.parent_job_id}"
    elif record.task == "img2img":
        cell += " · from an attached picture"
    return (
        f"**#{record.id}** {plain(shorten(record.prompt, 60))}\n"
        f"seed {record.seed} · {sampler} · {record.steps} steps · {when}{by}{status}{link}"
        f"{cell}{withheld}{deleted}"
    )
