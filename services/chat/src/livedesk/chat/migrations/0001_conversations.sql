-- Conversations: the aggregate every chat row is keyed by.
CREATE TABLE IF NOT EXISTS conversations (
    id          uuid        PRIMARY KEY,
    tenant_id   uuid        NOT NULL,
    inbox_id    text        NOT NULL,
    visitor_id  text        NOT NULL DEFAULT '',
    status      text        NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'assigned', 'resolved')),
    priority    smallint    NOT NULL DEFAULT 0,
    subject     text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS conversations_tenant_created ON conversations (tenant_id, created_at);
