-- The timeline keeps exactly what the classifier admits, and the classifier judges each
-- patient's stream on its own (CONTRACT.md): a (source, id) in two patients' streams is two
-- events, one in each. Kept by (patient, source, id), no longer by (source, id) alone, which
-- counted the second patient's event a conflict and left it off that patient's timeline.
ALTER TABLE patient_events DROP CONSTRAINT patient_events_pkey;
ALTER TABLE patient_events ADD PRIMARY KEY (patient_id, source, event_id);
