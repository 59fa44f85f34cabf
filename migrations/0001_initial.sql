-- Initial schema: drawing jobs, their images, and a small key-value table.
--
-- The store runs each migration file inside one BEGIN IMMEDIATE transaction together with the
-- PRAGMA user_version bump, so this file holds plain statements only (no BEGIN/COMMIT, no
-- user_version). Never edit a migration once it has shipped: add 0002_*.sql instead.
-- Times are unix seconds (REAL, time.time()).

CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY,
    guild_id        INTEGER,                 -- NULL for direct messages
    channel_id      INTEGER,
    user_id         INTEGER NOT NULL,
    user_name       TEXT    NOT NULL,

    -- The DrawRequest, one column per field; NULL means "the model's default" until resolved.
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
    -- How many times a worker started this job; lets restart recovery give up on a job that
    -- crashed the process more than once instead of crashing on every start.
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      REAL    NOT NULL,
    started_at      REAL,
    finished_at     REAL,
    duration_s      REAL,

    -- Where the result was posted: the jump URL stays valid, Discord CDN links expire.
    message_id      INTEGER,
    jump_url        TEXT,

    -- A reroll points at the job it came from; forgetting that job's user must not delete it.
    parent_job_id   INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
    deleted_at      REAL,
    deleted_by      INTEGER
);

-- History is always read per guild (optionally per user), newest first, paged by id.
CREATE INDEX jobs_guild_id ON jobs (guild_id, id DESC);
CREATE INDEX jobs_guild_user_id ON jobs (guild_id, user_id, id DESC);
-- forget_user() and per-user caps look across guilds.
CREATE INDEX jobs_user ON jobs (user_id);
-- Restart recovery reads only the few unfinished jobs.
CREATE INDEX jobs_unfinished ON jobs (id) WHERE status IN ('queued', 'running');
-- Without it every delete of a job would scan jobs for children to set NULL.
CREATE INDEX jobs_parent ON jobs (parent_job_id) WHERE parent_job_id IS NOT NULL;

CREATE TABLE job_images (
    job_id  INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx     INTEGER NOT NULL CHECK (idx >= 0),
    -- Relative to the data directory when the file lies inside it, so the folder can move.
    path    TEXT    NOT NULL,
    seed    INTEGER NOT NULL,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;

-- Content-addressed files are shared between jobs: deleting one job's rows must find the others.
CREATE INDEX job_images_path ON job_images (path);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
