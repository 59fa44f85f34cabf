-- Issue 14: prompt search through an FTS5 trigram index instead of reading every prompt.
--
-- What search means is unchanged: a job matches when easel_fold(query) is a substring of
-- easel_fold(prompt), where easel_fold is NFKC + casefold (bot/store.py _fold). The trigram
-- tokenizer's own case folding is simpler than that (no "ß" -> "ss", no full-width letters), so
-- the index holds the folded text and compares it case-sensitively: a quoted FTS5 phrase of 3 or
-- more characters then matches exactly the folded prompts that contain it.
--
-- easel_fold is a Python function registered on the store's connection only (the store registers
-- it before migrating, so this file may call it). A trigger that called it would make every
-- other connection that writes jobs fail ("no such function"), the sqlite3 shell included. So
-- the triggers here are plain SQL:
--   * a deleted job leaves the index at once;
--   * an inserted job, or one whose prompt changed, is listed in job_search_pending.
-- The store adds TEMP triggers on its own connection (Store._prepare_search) that fold and index
-- its new jobs in the same statement and take them off that list, so in normal running the list
-- stays empty. Jobs written by another connection wait on it until the store next opens; search
-- reads them directly (folding each) meanwhile, so results are exact at all times.
--
-- The FTS table is contentless and indexes folded || char(1, 1): the two padding characters give
-- every character of the text a trigram that starts with it, so a query of 1 or 2 characters can
-- be looked up too (an OR of the trigrams that start with it, found in job_search_terms). A query
-- that contains char(1) itself is read by scanning instead.
--
-- A future migration that rebuilds jobs (DROP TABLE jobs) drops the three triggers on jobs with
-- it and must create them again.

CREATE TABLE job_search (
    job_id  INTEGER PRIMARY KEY,    -- jobs.id
    folded  TEXT    NOT NULL        -- easel_fold(jobs.prompt)
);

-- Jobs whose folded prompt is not in job_search yet (written by another connection).
CREATE TABLE job_search_pending (
    job_id  INTEGER PRIMARY KEY
);

CREATE VIRTUAL TABLE job_search_fts USING fts5 (
    folded, content = '', tokenize = 'trigram case_sensitive 1'
);

-- The index's trigrams, for queries shorter than 3 characters.
CREATE VIRTUAL TABLE job_search_terms USING fts5vocab (job_search_fts, 'row');

-- Existing jobs (about 3 s per 100,000 jobs on the development machine).
INSERT INTO job_search (job_id, folded) SELECT id, easel_fold(prompt) FROM jobs;
INSERT INTO job_search_fts (rowid, folded) SELECT job_id, folded || char(1, 1) FROM job_search;

-- The FTS index follows job_search. A contentless table forgets what it indexed: deleting needs
-- the same text again, which job_search still has.
CREATE TRIGGER job_search_fts_insert AFTER INSERT ON job_search BEGIN
    INSERT INTO job_search_fts (rowid, folded) VALUES (new.job_id, new.folded || char(1, 1));
END;

CREATE TRIGGER job_search_fts_delete AFTER DELETE ON job_search BEGIN
    INSERT INTO job_search_fts (job_search_fts, rowid, folded)
    VALUES ('delete', old.job_id, old.folded || char(1, 1));
END;

CREATE TRIGGER job_search_fts_update AFTER UPDATE ON job_search BEGIN
    INSERT INTO job_search_fts (job_search_fts, rowid, folded)
    VALUES ('delete', old.job_id, old.folded || char(1, 1));
    INSERT INTO job_search_fts (rowid, folded) VALUES (new.job_id, new.folded || char(1, 1));
END;

-- job_search follows jobs. BEFORE triggers run before the store's AFTER ones whatever order
-- SQLite fires triggers in, so the store's fresh entry is never the one removed. (An INSERT OR
-- REPLACE removes a row without delete triggers; the BEFORE INSERT drops its stale entry. A new
-- AUTOINCREMENT id reads as -1 here, which matches nothing.)
CREATE TRIGGER jobs_search_replace BEFORE INSERT ON jobs BEGIN
    DELETE FROM job_search WHERE job_id = new.id;
END;

CREATE TRIGGER jobs_search_insert AFTER INSERT ON jobs
WHEN NOT EXISTS (SELECT 1 FROM job_search WHERE job_id = new.id) BEGIN
    INSERT OR IGNORE INTO job_search_pending (job_id) VALUES (new.id);
END;

CREATE TRIGGER jobs_search_update BEFORE UPDATE OF id, prompt ON jobs
WHEN old.id IS NOT new.id OR old.prompt IS NOT new.prompt BEGIN
    DELETE FROM job_search WHERE job_id IN (old.id, new.id);
    DELETE FROM job_search_pending WHERE job_id = old.id;
    INSERT OR IGNORE INTO job_search_pending (job_id) VALUES (new.id);
END;

CREATE TRIGGER jobs_search_delete AFTER DELETE ON jobs BEGIN
    DELETE FROM job_search WHERE job_id = old.id;
    DELETE FROM job_search_pending WHERE job_id = old.id;
END;
