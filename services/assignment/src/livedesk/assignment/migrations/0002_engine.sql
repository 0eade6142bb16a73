-- The routing engine's durable truth. Redis holds the live routing state and
-- makes every claim atomically; these tables are what it is rebuilt from.

-- Agent routing profiles, status and presence.
CREATE TABLE IF NOT EXISTS agents (
    tenant_id          text        NOT NULL,
    agent_id           text        NOT NULL,
    display_name       text        NOT NULL DEFAULT '',
    -- livedesk.events.v1.AgentStatus: 1 online, 2 away, 3 offline.
    status             smallint    NOT NULL DEFAULT 3,
    capacity           integer     NOT NULL DEFAULT 0 CHECK (capacity >= 0),
    skills             text[]      NOT NULL DEFAULT '{}',
    team_ids           text[]      NOT NULL DEFAULT '{}',
    time_zone          text        NOT NULL DEFAULT '',
    -- [{"weekday": 1..7, "start": min, "end": min}]
    shifts             jsonb       NOT NULL DEFAULT '[]',
    -- [{"date": "YYYY-MM-DD", "day_off": bool, "start": min, "end": min}]
    shift_exceptions   jsonb       NOT NULL DEFAULT '[]',
    priority_weight    integer     NOT NULL DEFAULT 0,
    -- Bumped by every change; Redis applies an agent update only when newer.
    version            bigint      NOT NULL DEFAULT 1,
    status_changed_at  timestamptz NOT NULL DEFAULT now(),
    -- Set when presence (not a person) made the agent away.
    auto_away          boolean     NOT NULL DEFAULT false,
    last_seen_at       timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, agent_id)
);
CREATE INDEX IF NOT EXISTS agents_online ON agents (tenant_id) WHERE status = 1;

-- Every conversation the engine routes, with its current routing state.
CREATE TABLE IF NOT EXISTS conversations (
    tenant_id        text        NOT NULL,
    conversation_id  text        NOT NULL,
    -- waiting | assigned | unassigned | resolved
    state            text        NOT NULL,
    -- Version of the routing state (Redis "epoch"); a write applies only when newer.
    version          bigint      NOT NULL,
    inbox_id         text        NOT NULL DEFAULT '',
    priority         smallint    NOT NULL DEFAULT 2,
    required_skills  text[]      NOT NULL DEFAULT '{}',
    team_id          text        NOT NULL DEFAULT '',
    agent_id         text,
    excluded_agent   text        NOT NULL DEFAULT '',
    -- livedesk.events.v1.QueueReason of the last queueing.
    queue_reason     smallint    NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL,
    queued_at        timestamptz NOT NULL,
    assigned_at      timestamptz,
    first_reply_at   timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, conversation_id)
);
CREATE INDEX IF NOT EXISTS conversations_by_agent
    ON conversations (tenant_id, agent_id) WHERE state = 'assigned';
CREATE INDEX IF NOT EXISTS conversations_waiting
    ON conversations (tenant_id) WHERE state = 'waiting';
CREATE INDEX IF NOT EXISTS conversations_sla
    ON conversations (assigned_at) WHERE state = 'assigned' AND first_reply_at IS NULL;

-- Every binding ever made (audit, fairness history).
CREATE TABLE IF NOT EXISTS assignments (
    tenant_id        text        NOT NULL,
    conversation_id  text        NOT NULL,
    version          bigint      NOT NULL,
    agent_id         text        NOT NULL,
    -- livedesk.events.v1.AssignedBy
    assigned_by      smallint    NOT NULL,
    assigned_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, conversation_id, version)
);
CREATE INDEX IF NOT EXISTS assignments_agent_time ON assignments (tenant_id, agent_id, assigned_at);

-- Generation of each tenant's Redis state: bumped by every rebuild, checked
-- by every durable record so a claim made on lost Redis state is never kept.
CREATE TABLE IF NOT EXISTS redis_generations (
    tenant_id  text   PRIMARY KEY,
    gen        bigint NOT NULL
);

-- The intake table of the skeleton becomes a view of the waiting conversations.
INSERT INTO conversations (tenant_id, conversation_id, state, version, inbox_id, priority,
                           required_skills, team_id, created_at, queued_at)
SELECT tenant_id::text, conversation_id::text, 'waiting', 1, inbox_id,
       CASE WHEN priority = 0 THEN 2 ELSE priority END, required_skills, team_id,
       created_at, enqueued_at
FROM waiting_conversations
ON CONFLICT DO NOTHING;
DROP TABLE waiting_conversations;
CREATE VIEW waiting_conversations AS
    SELECT conversation_id, tenant_id, inbox_id, priority, required_skills, team_id,
           created_at, queued_at AS enqueued_at
    FROM conversations WHERE state = 'waiting';
