"""Kafka SASL/SCRAM and TLS settings reach every Kafka client the services make.

The local broker speaks neither SASL nor TLS, so no test here connects: they check that the
settings become aiokafka's options, that aiokafka's clients accept them, and that the services
build their clients from them (a real secured cluster is the deployment's test).
"""

import subprocess
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from shared.kafka import client_options, reliable_producer
from shared.settings import Settings


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict[str, Path]:
    """A CA and a client certificate signed by it, made with the openssl command line."""
    folder = tmp_path_factory.mktemp("tls")
    ca_key, ca_cert = folder / "ca.key", folder / "ca.pem"
    key, request, cert = folder / "client.key", folder / "client.csr", folder / "client.pem"

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", str(ca_key), "-out", str(ca_cert),
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=painpath",
        "-keyout", str(key), "-out", str(request),
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "1", "-out", str(cert),
    )  # fmt: skip
    return {"cafile": ca_cert, "certfile": cert, "keyfile": key}


def secured(tls_files, protocol="SASL_SSL", mechanism="SCRAM-SHA-512") -> Settings:
    return Settings(
        kafka_bootstrap_servers="kafka-1.example:9093",
        database_url="postgresql://u:p@db.example/painpath",
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="painpath-classifier",
        kafka_sasl_password="s3cret-from-the-environment",
        kafka_ssl_cafile=tls_files["cafile"],
        kafka_ssl_certfile=tls_files["certfile"],
        kafka_ssl_keyfile=tls_files["keyfile"],
    )


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
async def test_sasl_ssl_settings_become_aiokafka_options_that_its_clients_accept(
    tls_files, mechanism
):
    settings = secured(tls_files, mechanism=mechanism)
    options = client_options(settings, settings.kafka_bootstrap_servers)

    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == mechanism
    assert options["sasl_plain_username"] == "painpath-classifier"
    assert options["sasl_plain_password"] == "s3cret-from-the-environment"
    context = options["ssl_context"]
    assert context.verify_mode.name == "CERT_REQUIRED" and context.check_hostname
    assert len(context.get_ca_certs()) == 1  # our CA, not the system's store
    consumer = AIOKafkaConsumer(**options, group_id="g")
    producer = reliable_producer(settings, settings.kafka_bootstrap_servers)
    for client in (consumer._client, producer.client):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == mechanism
        assert client._ssl_context.get_ca_certs() == context.get_ca_certs()


def test_tls_without_sasl_sends_no_credentials(tls_files):
    settings = secured(tls_files, protocol="SSL", mechanism=None)
    options = client_options(settings, settings.kafka_bootstrap_servers)

    assert options["security_protocol"] == "SSL" and "ssl_context" in options
    assert not any(name.startswith("sasl") for name in options)


def test_the_password_is_a_secret_that_settings_never_print(tls_files):
    settings = secured(tls_files)
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())


def test_the_classifier_builds_its_clients_from_the_same_options(tls_files):
    from services.classifier.policy import load_policy
    from services.classifier.stream import Classifier
    from shared.stack import Endpoints

    settings = secured(tls_files)
    endpoints = Endpoints(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        database_url=settings.database_url,
        api_keys=[],
        coordinator_tokens=[],
        pseudonym_key=None,
        local=False,
    )
    options = Classifier(settings, endpoints, load_policy())._options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["ssl_context"].get_ca_certs()
