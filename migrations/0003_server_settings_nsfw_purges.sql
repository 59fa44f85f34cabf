-- Issue 7, moderation: per-server settings, images withheld by the safety checker, purge audit.

-- One row per server that changed anything with /mod settings; NULL means "the bot-wide
-- default", so a default that changes later (a new model, a new .env) still applies.
CREATE TABLE guild_settings (
    guild_id            INTEGER PRIMARY KEY,
    max_steps           INTEGER CHECK (max_steps >= 1),
    max_side            INTEGER CHECK (max_side >= 1),
    max_count           INTEGER CHECK (max_count >= 1),
    max_queued_per_user INTEGER CHECK (max_queued_per_user >= 1),
    cooldown_s          INTEGER CHECK (cooldown_s >= 0),
    default_sampler     TEXT,
    default_steps       INTEGER CHECK (default_steps >= 1),
    -- 'filter': flagged images are never posted; 'age_restricted': posted in age-restricted
    -- channels (and threads of them) only.
    nsfw                TEXT CHECK (nsfw IN ('filter', 'age_restricted')),
    updated_by          INTEGER NOT NULL,
    updated_at          REAL    NOT NULL
);

-- How many of a job's images the safety checker flagged and the bot did not keep or post;
-- job_images holds only the others.
ALTER TABLE jobs ADD COLUMN withheld INTEGER NOT NULL DEFAULT 0 CHECK (withheld >= 0);

-- /mod purge: who removed whose drawings in which server, and how much went.
CREATE TABLE purges (
    id               INTEGER PRIMARY KEY,
    guild_id         INTEGER NOT NULL,
    moderator_id     INTEGER NOT NULL,
    target_user_id   INTEGER NOT NULL,
    purged_at        REAL    NOT NULL,
    jobs             INTEGER NOT NULL,
    images           INTEGER NOT NULL,
    messages_deleted INTEGER NOT NULL,
    -- Already deleted on Discord (404), or could not be deleted (kept for a human to check).
    messages_missing INTEGER NOT NULL,
    messages_failed  INTEGER NOT NULL
);
CREATE INDEX purges_guild ON purges (guild_id, id DESC);
