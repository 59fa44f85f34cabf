-- Issue 17: drawing from a picture (an upload, or a result remixed). jobs.task is 'img2img' and
-- jobs.init_image the stored starting picture (content-addressed under images/, like results);
-- strength is A1111's denoising strength: how much of it is redrawn.

ALTER TABLE jobs ADD COLUMN strength REAL CHECK (strength IS NULL OR (strength > 0 AND strength <= 1));

-- Stored pictures are kept while a job starts from them, and found by path when one goes.
CREATE INDEX jobs_init_image ON jobs (init_image) WHERE init_image IS NOT NULL;
