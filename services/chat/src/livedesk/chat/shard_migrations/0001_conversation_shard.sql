-- A conversation shard: conversations, messages, read state and CSAT of the
-- logical shards mapped to this database (docs/sharding.md). The directory
-- (tenants, users, inboxes, visitors) lives on DATABASE_URL, possibly another
-- database, so there are no foreign keys to it: chat checks them on write.

CREATE TABLE IF NOT EXISTS conversations (
    id              uuid        PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    inbox_id        uuid        NOT NULL,
    visitor_id      uuid        NOT NULL,
    status          text        NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'assigned', 'resolved')),
    priority        smallint    NOT NULL DEFAULT 2,
    subject         text        NOT NULL DEFAULT '',
    team_id         uuid,
    agent_id        uuid,
    queue_position  integer,
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
CREATE UNIQUE INDEX IF NOT EXISTS messages_client_msg
    ON messages (conversation_id, sender_id, client_msg_id) WHERE client_msg_id IS NOT NULL;

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

-- Bumped by every change the directory's conversation_index mirrors (status,
-- agent, team); not by messages. Orders index updates: an older one never
-- overwrites a newer one.
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS index_version bigint NOT NULL DEFAULT 0;

-- Conversations whose index entry may be behind: written in the same
-- transaction as the change (an outbox for the index), removed once the
-- directory has that version.
CREATE TABLE IF NOT EXISTS conversation_index_queue (
    conversation_id uuid   PRIMARY KEY,
    version         bigint NOT NULL
);

-- chat_with_seq(prefix, seq): the encoded envelope ``prefix`` with its
-- message_created.seq set to ``seq``.
--
-- Why: a message, its seq and its outbox event are written by ONE statement
-- (one round trip, no explicit transaction) on the hottest path of the
-- system, but the seq is only known inside that statement. Protobuf defines
-- concatenation of two encoded messages as their merge, so the writer encodes
-- the envelope without the seq and the database appends the encoding of
-- Envelope{message_created{seq}}: field 26, length-delimited, holding field 2
-- as a varint. livedesk.chat.message_events checks those field numbers at
-- import, and a test compares this function with the protobuf library.
CREATE OR REPLACE FUNCTION chat_with_seq(prefix bytea, seq bigint) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    varint bytea := ''::bytea;
    n bigint := seq;
    inner_message bytea;
BEGIN
    LOOP
        IF n < 128 THEN
            varint := varint || set_byte('\x00'::bytea, 0, n::int);
            EXIT;
        END IF;
        varint := varint || set_byte('\x00'::bytea, 0, ((n & 127) | 128)::int);
        n := n >> 7;
    END LOOP;
    inner_message := '\x10'::bytea || varint;
    RETURN prefix || '\xd201'::bytea
        || set_byte('\x00'::bytea, 0, length(inner_message)) || inner_message;
END
$$;

-- The logical shard of a conversation: livedesk.chat.shards.logical_shard in
-- SQL (md5 of the uuid's 16 bytes, first 60 bits, modulo the shard count).
-- Used by the shard move script (copy filters, write fence).
CREATE OR REPLACE FUNCTION chat_logical_shard(id uuid, logical_shards integer) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ((('x' || substr(md5(uuid_send(id)), 1, 15))::bit(60)::bigint) % logical_shards)::integer
$$;

-- The write fence of a logical shard being moved (livedesk.chat.shard_move):
-- while a row is here, triggers (created by the move script only for the
-- duration of the move, so normal writes pay nothing) refuse writes to the
-- shard's conversations, messages, read state and CSAT on this database.
CREATE TABLE IF NOT EXISTS chat_fenced_shards (
    logical_shard  integer PRIMARY KEY,
    logical_shards integer NOT NULL
);

CREATE OR REPLACE FUNCTION chat_shard_fence() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    cid uuid := (to_jsonb(NEW) ->> TG_ARGV[0])::uuid;
BEGIN
    IF EXISTS (SELECT 1 FROM chat_fenced_shards f
               WHERE chat_logical_shard(cid, f.logical_shards) = f.logical_shard) THEN
        RAISE EXCEPTION 'logical shard of conversation % is moving; retry', cid
            USING ERRCODE = '55000';
    END IF;
    RETURN NEW;
END
$$;
