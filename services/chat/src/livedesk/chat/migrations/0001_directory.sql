-- Chat's directory database: tenants and their people. Conversations and
-- their messages live on the conversation shards (shard_migrations/,
-- docs/sharding.md), which is this same database in the default set-up.
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
