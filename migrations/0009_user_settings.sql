-- Issue 18: a member's own defaults for /draw (and their reply language), the same in every
-- server. NULL means "not set": the server's default, else the bot's, applies. /forget deletes
-- the row.

CREATE TABLE user_settings (
    user_id INTEGER PRIMARY KEY,
    sampler TEXT,
    steps INTEGER CHECK (steps IS NULL OR steps >= 1),
    guidance REAL CHECK (guidance IS NULL OR guidance >= 0),
    width INTEGER CHECK (width IS NULL OR width >= 8),
    height INTEGER CHECK (height IS NULL OR height >= 8),
    count INTEGER CHECK (count IS NULL OR count >= 1),
    negative_prompt TEXT,
    spoiler INTEGER CHECK (spoiler IS NULL OR spoiler IN (0, 1)),
    language TEXT,
    updated_at REAL NOT NULL
);
