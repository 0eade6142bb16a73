-- Chat's data: tenants and their people, conversations and messages.
-- Every row carries tenant_id; every query is scoped by it.

CREATE TABLE IF NOT EXISTS tenants (
    id          uuid        PRIMARY KEY,
    slug        text        NOT NULL UNIQUE,
    name        text        NOT NULL,
    time_zone   text        NOT NULL DEFAULT 'UTC',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS teams (
    id          uuid        PRIMARY KEY,
    tenant_id   uuid        NOT NULL REFERENCES tenants (id),
    name        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE IF NOT EXISTS inboxes (
    id              uuid        PRIMARY KEY,
    tenant_id       uuid        NOT NULL REFERENCES tenants (id),
    name            text        NOT NULL,
    widget_key      text        NOT NULL UNIQUE,
    allowed_origins text[]      NOT NULL DEFAULT '{}',
    team_id         uuid        REFERENCES teams (id),
    required_skills text[]      NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS inboxes_tenant ON inboxes (tenant_id);

-- Agents and admins.
CREATE TABLE IF NOT EXISTS users (
    id              uuid        PRIMARY KEY,
    tenant_id       uuid        NOT NULL REFERENCES tenants (id),
    email           text        NOT NULL,
    display_name    text        NOT NULL,
    role            text        NOT NULL CHECK (role IN ('agent', 'admin')),
    password_hash   text        NOT NULL,
    active          boolean     NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, email)
);

CREATE TABLE IF NOT EXISTS team_members (
    team_id     uuid NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (team_id, user_id)
);

CREATE TABLE IF NOT EXISTS visitors (
    id          uuid        PRIMARY KEY,
    tenant_id   uuid        NOT NULL REFERENCES tenants (id),
    inbox_id    uuid        NOT NULL REFERENCES inboxes (id),
    name        text        NOT NULL DEFAULT '',
    email       text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Refresh tokens (rotating): only a hash is kept.
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash  bytea       PRIMARY KEY,
    tenant_id   uuid        NOT NULL,
    subject_id  uuid        NOT NULL,
    role        text        NOT NULL,
    family_id   uuid        NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens (family_id);

CREATE TABLE IF NOT EXISTS conversations (
    id              uuid        PRIMARY KEY,
    tenant_id       uuid        NOT NULL REFERENCES tenants (id),
    inbox_id        uuid        NOT NULL REFERENCES inboxes (id),
    visitor_id      uuid        NOT NULL REFERENCES visitors (id),
    status          text        NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'assigned', 'resolved')),
    priority        smallint    NOT NULL DEFAULT 2,
    subject         text        NOT NULL DEFAULT '',
    team_id         uuid,
    agent_id        uuid,
    queue_position  integer,
    -- occurred_at of the last routing event applied: older ones arriving late are ignored.
    routed_at       timestamptz,
    last_seq        bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz
);
CREATE INDEX IF NOT EXISTS conversations_tenant_status ON conversations (tenant_id, status, created_at);
CREATE INDEX IF NOT EXISTS conversations_agent ON conversations (agent_id) WHERE agent_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS conversations_visitor ON conversations (visitor_id);

CREATE TABLE IF NOT EXISTS messages (
    conversation_id uuid        NOT NULL REFERENCES conversations (id),
    seq             bigint      NOT NULL,
    id              uuid        NOT NULL,
    tenant_id       uuid        NOT NULL,
    sender_kind     text        NOT NULL CHECK (sender_kind IN ('visitor', 'agent', 'system')),
    sender_id       uuid,
    body            text        NOT NULL,
    client_msg_id   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, seq)
);
-- A retried send (same sender, same client_msg_id) finds the original.
CREATE UNIQUE INDEX IF NOT EXISTS messages_client_msg
    ON messages (conversation_id, sender_id, client_msg_id) WHERE client_msg_id IS NOT NULL;

-- Last seq each participant has read.
CREATE TABLE IF NOT EXISTS read_state (
    conversation_id uuid        NOT NULL REFERENCES conversations (id),
    participant_id  uuid        NOT NULL,
    last_read_seq   bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, participant_id)
);

CREATE TABLE IF NOT EXISTS csat (
    conversation_id uuid        PRIMARY KEY REFERENCES conversations (id),
    tenant_id       uuid        NOT NULL,
    rating          smallint    NOT NULL CHECK (rating BETWEEN 1 AND 5),
    comment         text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);
