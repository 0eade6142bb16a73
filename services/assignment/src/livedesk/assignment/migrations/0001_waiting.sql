-- Conversations the engine has been told about and not yet placed.
CREATE TABLE IF NOT EXISTS waiting_conversations (
    conversation_id uuid        PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    inbox_id        text        NOT NULL,
    priority        smallint    NOT NULL,
    required_skills text[]      NOT NULL DEFAULT '{}',
    team_id         text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL,
    enqueued_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS waiting_conversations_order
    ON waiting_conversations (tenant_id, priority DESC, created_at);
