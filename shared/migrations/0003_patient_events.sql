-- The coordinator's copy of each patient's clinical events, for the dashboard's timeline.
-- (source, event_id) is the contract's idempotency key: the first received wins.
CREATE TABLE patient_events (
    source      text        NOT NULL,
    event_id    text        NOT NULL,
    patient_id  text        NOT NULL,
    type        text        NOT NULL,
    time        timestamptz NOT NULL,
    body        jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, event_id)
);

CREATE INDEX patient_events_patient ON patient_events (patient_id, time);
