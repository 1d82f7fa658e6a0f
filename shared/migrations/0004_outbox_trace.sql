-- The W3C trace of the change, published with it as the `traceparent` header of care.tasks.v1.
ALTER TABLE outbox ADD COLUMN traceparent text;
