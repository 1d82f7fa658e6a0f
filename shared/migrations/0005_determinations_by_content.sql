-- A determination is recorded once by what it is: the patient, its decision (`determination_id`)
-- and the instant it was made for (`as_of`); no longer by where it was read. Offsets restart
-- (a topic re-created, a broker rebuilt, a cluster migrated): (topic, partition, offset) would
-- take a new determination for one already applied. The offset columns stay, as provenance.
ALTER TABLE determinations DROP CONSTRAINT determinations_topic_kafka_partition_kafka_offset_key;

-- The same determination read at two offsets (a producer's retry) was recorded twice: keep the
-- first, and point a plan that followed a later copy at the first (the same content).
CREATE TEMPORARY TABLE determination_copies ON COMMIT DROP AS
SELECT id, first_value(id) OVER (
           PARTITION BY patient_id, determination_id, as_of ORDER BY id
       ) AS kept
FROM determinations;

UPDATE care_plans p SET current_determination = c.kept
FROM determination_copies c
WHERE p.current_determination = c.id AND c.id <> c.kept;

DELETE FROM determinations d USING determination_copies c WHERE d.id = c.id AND c.id <> c.kept;

CREATE UNIQUE INDEX determinations_content ON determinations (patient_id, determination_id, as_of);
