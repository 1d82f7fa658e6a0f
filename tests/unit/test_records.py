"""One reading of a record of `pain.events.v1` (`shared.contract.records`), for the classifier and
the coordinator's timeline alike."""

from __future__ import annotations

import json

from aiokafka.partitioner import DefaultPartitioner

from shared.contract.records import Rejection, partition_of, read_record

EVENT = {
    "specversion": "1.0",
    "id": "rec-1",
    "source": "urn:hospital:st-olaf:ehr",
    "type": "pain.score.recorded.v1",
    "time": "2026-01-01T09:00:00Z",
    "data": {"patient_id": "pt-records-01", "score": 4},
}
VALUE = json.dumps(EVENT).encode()
KEY = b"pt-records-01"


def test_partition_of_is_the_default_partitioner_of_kafka_clients():
    partitioner = DefaultPartitioner()
    for number in range(200):
        key = f"pt-{number}".encode()
        assert partition_of(key, 12) == partitioner(key, list(range(12)), list(range(12)))


def test_a_record_on_its_keys_partition_is_read():
    event, text = read_record(KEY, VALUE, partition_of(KEY, 12), 12)
    assert event.patient_id == "pt-records-01" and text == VALUE.decode()


def test_a_record_on_another_partition_than_its_keys_is_refused_naming_both():
    home = partition_of(KEY, 12)
    refused = read_record(KEY, VALUE, (home + 5) % 12, 12)

    assert isinstance(refused, Rejection)
    assert (refused.kind, refused.field) == ("partition", "partition")
    assert refused.reason.startswith(f"partition: the record is on partition {(home + 5) % 12},")
    assert f"is {home} of 12" in refused.reason and "pt-records" not in refused.reason


def test_without_a_partition_only_the_value_and_the_key_are_read():
    assert not isinstance(read_record(KEY, VALUE), Rejection)  # a line of a file
    assert read_record(b"someone-else", VALUE, 0, 12).kind == "key"  # the key is judged first
    assert read_record(None, VALUE, 0, 12).kind == "key"
    assert read_record(KEY, b"x" * (600 * 1024), 0, 12).kind == "size"
