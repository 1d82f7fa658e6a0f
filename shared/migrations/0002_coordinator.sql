-- The coordinator: determinations received, care plans, tasks, their audit trail and the outbox.

-- Every determination record consumed, once: (topic, partition, offset) makes re-delivery a no-op,
-- and it is written in the same transaction as the task changes it causes.
CREATE TABLE determinations (
    id               bigserial   PRIMARY KEY,
    topic            text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    patient_id       text        NOT NULL,
    determination_id text        NOT NULL,
    status           text        NOT NULL,
    as_of            timestamptz NOT NULL,
    body             jsonb       NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (topic, kafka_partition, kafka_offset)
);

CREATE INDEX determinations_patient ON determinations (patient_id, id);

CREATE TABLE care_plans (
    patient_id            text        PRIMARY KEY,
    templates             text        NOT NULL,
    current_determination bigint      NOT NULL REFERENCES determinations (id),
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tasks (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    patient_id       text        NOT NULL REFERENCES care_plans (patient_id),
    key              text        NOT NULL,
    title            text        NOT NULL,
    description      text        NOT NULL,
    role             text        NOT NULL,
    priority         text        NOT NULL,
    prerequisites    text[]      NOT NULL,
    reason           text        NOT NULL,
    determination_id text        NOT NULL,
    state            text        NOT NULL,
    assignee         text,
    -- set by hand (reassign) or accepted: scheduling keeps it; otherwise it may move the task
    -- to whoever on the role has room
    assignee_fixed   boolean     NOT NULL DEFAULT false,
    created_on       date        NOT NULL,
    due_on           date        NOT NULL,
    scheduled_on     date,
    late             boolean     NOT NULL DEFAULT false,
    done_on          date,
    outcome          text,
    cancel_reason    text,
    version          integer     NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- A plan never holds two open tasks of the same kind for one patient.
CREATE UNIQUE INDEX tasks_one_open_per_key ON tasks (patient_id, key)
    WHERE state IN ('proposed', 'accepted', 'in_progress');
CREATE INDEX tasks_patient ON tasks (patient_id);
CREATE INDEX tasks_role_state ON tasks (role, state);
CREATE INDEX tasks_assignee_week ON tasks (assignee, scheduled_on) WHERE scheduled_on IS NOT NULL;

-- Who did what to which task, when and why. Never updated, never deleted.
CREATE TABLE task_audit (
    id         bigserial   PRIMARY KEY,
    task_id    uuid        NOT NULL REFERENCES tasks (id),
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text        NOT NULL,
    change     text        NOT NULL,
    from_state text,
    to_state   text        NOT NULL,
    reason     text,
    details    jsonb       NOT NULL DEFAULT '{}'
);

CREATE INDEX task_audit_task ON task_audit (task_id, id);

-- Every task change, to be published to care.tasks.v1 by the relay. `sequence` is gap-free:
-- it is taken from outbox_counter inside the writing transaction, whose row lock also makes
-- transactions commit in sequence order.
CREATE TABLE outbox (
    sequence         bigint      PRIMARY KEY,
    patient_id       text        NOT NULL,
    patient_sequence bigint      NOT NULL,
    task_id          uuid        NOT NULL REFERENCES tasks (id),
    role             text        NOT NULL,
    change           text        NOT NULL,
    payload          jsonb       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    published_at     timestamptz
);

CREATE INDEX outbox_unpublished ON outbox (sequence) WHERE published_at IS NULL;
CREATE INDEX outbox_role ON outbox (role, sequence);

CREATE TABLE outbox_counter (
    single boolean PRIMARY KEY DEFAULT true CHECK (single),
    value  bigint  NOT NULL
);
INSERT INTO outbox_counter (value) VALUES (0);

CREATE TABLE patient_sequences (
    patient_id text   PRIMARY KEY,
    value      bigint NOT NULL
);
