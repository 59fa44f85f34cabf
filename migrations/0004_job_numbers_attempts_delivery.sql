-- Issue 13: job numbers are never reused, and a delivery that was given up is recorded.
--
-- Without AUTOINCREMENT SQLite hands out max(id) + 1, so deleting the newest jobs (/forget,
-- /mod purge) gave their numbers to the next jobs, and the Reroll/Delete buttons on the old
-- posts acted on the new ones. AUTOINCREMENT keeps the highest number ever used in
-- sqlite_sequence. SQLite can't add it to a table, so the table is rebuilt (the store turns
-- foreign keys off while a migration runs and checks them before it commits).

CREATE TABLE jobs_new (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id        INTEGER,                 -- NULL for direct messages
    channel_id      INTEGER,
    user_id         INTEGER NOT NULL,
    user_name       TEXT    NOT NULL,

    prompt          TEXT    NOT NULL,
    negative_prompt TEXT    NOT NULL DEFAULT '',
    steps           INTEGER NOT NULL,
    guidance        REAL    NOT NULL,
    eta             REAL    NOT NULL,
    sampler         TEXT,
    seed            INTEGER,
    width           INTEGER,
    height          INTEGER,
    count           INTEGER NOT NULL,
    model           TEXT,

    status          TEXT    NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled', 'refused')),
    error           TEXT,
    -- How many times a worker started this job (counted when it starts): restart recovery
    -- gives up on a job that was started MAX_ATTEMPTS times without finishing.
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      REAL    NOT NULL,
    started_at      REAL,
    finished_at     REAL,
    duration_s      REAL,

    message_id      INTEGER,
    jump_url        TEXT,

    parent_job_id   INTEGER REFERENCES jobs_new (id) ON DELETE SET NULL,
    deleted_at      REAL,
    deleted_by      INTEGER,
    withheld        INTEGER NOT NULL DEFAULT 0 CHECK (withheld >= 0),
    -- Why a drawn result was never posted (too large, channel gone, ...): set once the bot gives
    -- up, so a restart does not try to post it again.
    delivery_failed TEXT
);

INSERT INTO jobs_new (
    id, guild_id, channel_id, user_id, user_name, prompt, negative_prompt, steps, guidance, eta,
    sampler, seed, width, height, count, model, status, error, attempts, created_at, started_at,
    finished_at, duration_s, message_id, jump_url, parent_job_id, deleted_at, deleted_by, withheld
)
SELECT
    id, guild_id, channel_id, user_id, user_name, prompt, negative_prompt, steps, guidance, eta,
    sampler, seed, width, height, count, model, status, error, attempts, created_at, started_at,
    finished_at, duration_s, message_id, jump_url, parent_job_id, deleted_at, deleted_by, withheld
FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;

CREATE INDEX jobs_guild_id ON jobs (guild_id, id DESC);
CREATE INDEX jobs_guild_user_id ON jobs (guild_id, user_id, id DESC);
CREATE INDEX jobs_user ON jobs (user_id);
CREATE INDEX jobs_unfinished ON jobs (id) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_parent ON jobs (parent_job_id) WHERE parent_job_id IS NOT NULL;

-- /mod pause is per server (a public bot must not be stopped everywhere from one server); the
-- operator's pause of everything is the row with guild_id 0. Kept here so a restart keeps it.
CREATE TABLE paused (
    guild_id  INTEGER PRIMARY KEY,
    paused_by INTEGER NOT NULL,
    paused_at REAL    NOT NULL
);
