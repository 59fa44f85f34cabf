"""One line per job for history listings (/history, /mod history), in the current locale."""

from __future__ import annotations

from bot.i18n import N_, _, ngettext, number
from bot.render import shorten
from bot.store import JobRecord
from bot.text import plain
from pipeline.samplers import sampler_label

# What a job that is not done says of itself; the store's status names are the keys.
STATUS_LABELS = {
    "queued": N_("queued"),
    "running": N_("drawing"),
    "failed": N_("failed"),
    "cancelled": N_("cancelled"),
    "refused": N_("refused"),
}


def describe_record(record: JobRecord, *, show_requester: bool = False) -> str:
    """A history entry for a job: number, prompt, settings, when, where it was posted.

    ``show_requester`` names who asked (for moderators' listings of everyone's jobs). Each
    `` · `` part is a whole phrase of its own; the prompt is the member's text, never translated.
    """
    when = f"<t:{int(record.created_at)}:R>"  # Discord writes it in each reader's language
    parts: list[str] = []
    if show_requester:
        requester = f"<@{record.user_id}>"
        parts.append(_("by {member}", member=requester))
    if record.status != "done":
        label = STATUS_LABELS.get(record.status)
        parts.append(_(label) if label else record.status)
    if record.jump_url and not record.deleted:
        parts.append(_("[message]({url})", url=record.jump_url))
    seed = _("seed {seed}", seed=record.seed)
    if record.kind == "compare":
        # Its settings vary by cell: the grid's own entry says what it is, its cells the rest.
        if record.deleted:
            parts.append(_deleted(record))
        title = _(
            "**#{job}** 🔳 comparison: {prompt}",
            job=record.id,
            prompt=plain(shorten(record.prompt, 50)),
        )
        return "\n".join((title, " · ".join((seed, when, *parts))))
    if record.compare_id:
        parts.append(_("cell of comparison #{comparison}", comparison=record.compare_id))
    if record.kind == "vary" and record.parent_job_id:
        parts.append(_("variation of #{job}", job=record.parent_job_id))
    elif record.kind == "upscale" and record.parent_job_id:
        parts.append(_("upscaled from #{job}", job=record.parent_job_id))
    elif record.kind == "remix" and record.parent_job_id:
        parts.append(_("remix of #{job}", job=record.parent_job_id))
    elif record.task == "img2img":
        parts.append(_("from an attached picture"))
    if record.withheld:
        parts.append(_("🔞 {n} withheld", n=number(record.withheld)))
    if record.deleted:
        parts.append(_deleted(record))
    steps = ngettext("{n} step", "{n} steps", record.steps)
    # The model's name as MODELS gives it (a proper name, the same in every language).
    model = [plain(shorten(record.model, 40))] if record.model else []
    settings = (*model, seed, sampler_label(record.sampler), steps, when)
    return "\n".join(
        (f"**#{record.id}** {plain(shorten(record.prompt, 60))}", " · ".join((*settings, *parts)))
    )


def _deleted(record: JobRecord) -> str:
    by = f"<@{record.deleted_by}>"
    return _("🗑️ deleted by {member}", member=by)
