-- Retention and erasure (issue 3, docs/operations.md "Archive and retention").

-- Days after which a tenant's resolved conversations are deleted for good
-- (database, archive, and - through conversation.purged - every service).
-- NULL: kept for ever (archived after ARCHIVE_AFTER_DAYS, never deleted).
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS retention_days integer
    CHECK (retention_days IS NULL OR retention_days BETWEEN 1 AND 36500);

-- "Forget this visitor" requests (GDPR erasure). One per visitor: a repeated
-- request returns the first. 'pending' until every store chat keeps is clean
-- and visitor.erased is in the outbox (same transaction as the last deletion);
-- a pending request is finished by the next archive run.
CREATE TABLE IF NOT EXISTS erasure_requests (
    id              uuid        PRIMARY KEY,
    tenant_id       uuid        NOT NULL REFERENCES tenants (id),
    visitor_id      uuid        NOT NULL,
    requested_by    uuid        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done')),
    conversations   integer     NOT NULL DEFAULT 0,
    messages        integer     NOT NULL DEFAULT 0,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    UNIQUE (tenant_id, visitor_id)
);
CREATE INDEX IF NOT EXISTS erasure_requests_pending
    ON erasure_requests (created_at) WHERE status = 'pending';
