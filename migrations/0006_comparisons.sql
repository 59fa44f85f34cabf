-- Issue 15: /compare. A comparison is a job row of kind 'compare' holding the shared settings and,
-- in `spec`, its axes (JSON, pipeline.compare.Comparison.to_dict); each cell is an ordinary
-- drawing job whose compare_id names it, so history, reroll and --from work on a cell as on any
-- drawing. Columns are added, not rebuilt: 0005's search triggers stay as they are.

ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'draw';
-- SET NULL, not CASCADE: rows are deleted by the store, which deletes a comparison's cells (and
-- their image files) itself; a cascade would leave the files behind.
ALTER TABLE jobs ADD COLUMN compare_id INTEGER REFERENCES jobs (id) ON DELETE SET NULL;
ALTER TABLE jobs ADD COLUMN spec TEXT;

CREATE INDEX jobs_compare ON jobs (compare_id, id) WHERE compare_id IS NOT NULL;

-- The most cells a comparison may have in a server (NULL: the bot's 16).
ALTER TABLE guild_settings ADD COLUMN max_compare_cells INTEGER;
