-- Cold data (issue 3, docs/operations.md "Archive and retention").
--
-- A conversation resolved longer ago than ARCHIVE_AFTER_DAYS has its messages
-- moved to the archive (an object store) by `python -m livedesk.chat
-- archive`. Its row stays here, still 'resolved', as the pointer the read
-- path follows: archived_at says its messages are no longer in `messages`,
-- archive_key names the archive object that holds them. Read state and CSAT
-- (a few rows) stay too. An archived conversation is never reopened.
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS archived_at timestamptz;
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS archive_key text;

-- What the archiver and the retention purge look for: resolved conversations
-- by age, not yet archived (or already archived, for the purge).
CREATE INDEX IF NOT EXISTS conversations_resolved_age
    ON conversations (resolved_at) WHERE status = 'resolved';
