-- Issue 18: the language a job's posts are written in (a Discord locale such as "zh-CN"),
-- chosen when it was queued: the server's, or in DMs the member's. A job re-delivered after a
-- restart keeps it, where the member's client language can no longer be asked. NULL: older
-- jobs, which use the server's current language.

ALTER TABLE jobs ADD COLUMN locale TEXT;
