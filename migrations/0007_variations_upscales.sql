-- Issue 16: iterate on a result. A variation is a drawing whose starting noise mixes in a
-- variation seed (A1111's "Variation seed" and "Variation seed strength"); an upscale redraws a
-- stored picture (init_image, a path like job_images.path) larger with an upscaling model. Both
-- are ordinary jobs: jobs.kind says which ('vary', 'upscale') for the history and the embed.

ALTER TABLE jobs ADD COLUMN variation_seed INTEGER;
ALTER TABLE jobs ADD COLUMN variation_strength REAL NOT NULL DEFAULT 0
    CHECK (variation_strength >= 0 AND variation_strength <= 1);
-- What the engine runs: 'draw' (text to image) or 'upscale' (init_image made larger).
ALTER TABLE jobs ADD COLUMN task TEXT NOT NULL DEFAULT 'draw';
ALTER TABLE jobs ADD COLUMN init_image TEXT;
