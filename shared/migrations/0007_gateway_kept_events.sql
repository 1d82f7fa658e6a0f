-- The gateway keeps what it accepted, not only that it accepted it: the exact record it
-- published (key, value, headers), until GATEWAY_IDEMPOTENCY_RETENTION_DAYS, so that
-- `painpath replay --since T` can publish it again after a broker lost its log. A claim made
-- before this migration has no record (NULL): it is counted by a replay, never published.
ALTER TABLE gateway_accepted_events
    ADD COLUMN record_key     bytea,
    ADD COLUMN record_value   bytea,
    ADD COLUMN header_names   text[],
    ADD COLUMN header_values  bytea[],
    -- Its place in its request: with accepted_at (the request's transaction time) the order
    -- the events were published in.
    ADD COLUMN batch_position integer NOT NULL DEFAULT 0;

CREATE INDEX gateway_accepted_events_order
    ON gateway_accepted_events (accepted_at, batch_position, source, event_id);
DROP INDEX gateway_accepted_events_accepted_at;

-- Every replay, as an audit record: who read the kept events back, from when, how many.
CREATE TABLE gateway_replays (
    id          bigserial   PRIMARY KEY,
    operator    text        NOT NULL,
    reason      text        NOT NULL,
    since       timestamptz NOT NULL,
    topic       text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    published   bigint      NOT NULL DEFAULT 0,
    not_kept    bigint      NOT NULL DEFAULT 0
);
