-- Tables the platform's bus helpers keep in a service's own database.

-- Events already handled, per consumer: the idempotency record.
CREATE TABLE IF NOT EXISTS processed_events (
    consumer     text        NOT NULL,
    event_id     uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX IF NOT EXISTS processed_events_processed_at ON processed_events (processed_at);

-- Events committed with the state they describe, waiting for the relay.
-- An event no queue is bound to yet is retried later (next_attempt_at) without
-- holding back the others, and parked in outbox_unroutable after max attempts.
CREATE TABLE IF NOT EXISTS outbox (
    id              bigserial   PRIMARY KEY,
    event_id        uuid        NOT NULL UNIQUE,
    routing_key     text        NOT NULL,
    body            bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT '-infinity'
);
CREATE INDEX IF NOT EXISTS outbox_retry ON outbox (next_attempt_at) WHERE attempts > 0;

CREATE TABLE IF NOT EXISTS outbox_unroutable (
    id          bigint      PRIMARY KEY,
    event_id    uuid        NOT NULL UNIQUE,
    routing_key text        NOT NULL,
    body        bytea       NOT NULL,
    created_at  timestamptz NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    attempts    integer     NOT NULL
);
