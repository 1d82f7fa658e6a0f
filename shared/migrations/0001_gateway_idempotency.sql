-- The gateway's record of accepted events: (source, id) is the idempotency key of the contract.
-- Rows older than GATEWAY_IDEMPOTENCY_RETENTION_DAYS are deleted by the gateway.
CREATE TABLE gateway_accepted_events (
    source       text        NOT NULL,
    event_id     text        NOT NULL,
    content_hash bytea       NOT NULL,
    accepted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, event_id)
);

CREATE INDEX gateway_accepted_events_accepted_at ON gateway_accepted_events (accepted_at);
