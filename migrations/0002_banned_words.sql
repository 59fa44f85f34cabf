-- Per-server banned words for /mod banword; stored normalised (see bot/wordfilter.py).
CREATE TABLE banned_words (
    guild_id INTEGER NOT NULL,
    word TEXT NOT NULL,
    added_by INTEGER NOT NULL,
    added_at REAL NOT NULL,
    PRIMARY KEY (guild_id, word)
);
