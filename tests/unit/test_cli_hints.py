"""What `painpath run` and `painpath publish` say about keys, tokens and the gateway's address:
what is true for the settings in force (issue 13's first-run mends)."""

import os

import pytest

from painpath.cli import _gateway_url, _key_hint, _token_hint
from shared.settings import ApiKey, ApiToken, Settings
from shared.stack import StackState


@pytest.fixture(autouse=True)
def no_addresses_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GATEWAY_HOST", "GATEWAY_PORT", "GATEWAY_API_KEYS", "COORDINATOR_TOKENS"):
        monkeypatch.delenv(name, raising=False)


def settings(**values) -> Settings:
    return Settings(_env_file=None, **values)


def test_the_local_token_is_named_only_when_no_tokens_are_set():
    assert _token_hint(settings()) == "painpath stack key --admin"
    tokens = [ApiToken(name="dr-lee", token="s3cret-token", role="pain_specialist")]
    hint = _token_hint(settings(coordinator_tokens=tokens))
    assert hint == "one of COORDINATOR_TOKENS: dr-lee (pain_specialist)"
    assert "s3cret" not in hint


def test_the_local_key_is_named_only_when_no_keys_are_set():
    assert _key_hint(settings()) == "painpath stack key"
    keys = [ApiKey(name="st-olaf-ehr", key="s3cret-key", sources=["*"])]
    assert _key_hint(settings(gateway_api_keys=keys)) == "one of GATEWAY_API_KEYS: st-olaf-ehr"


def test_publish_finds_the_gateway_of_the_running_run_unless_told_otherwise():
    state = StackState(
        "127.0.0.1:1",
        "postgresql://x",
        1,
        "k",
        "p",
        run_pid=os.getpid(),
        services={"gateway": {"url": "http://127.0.0.1:40123", "pid": 1}},
    )
    assert _gateway_url(settings(), state) == "http://127.0.0.1:40123"
    assert _gateway_url(settings(gateway_port=9999), state) == "http://127.0.0.1:9999"
    assert _gateway_url(settings(), None) == "http://127.0.0.1:8080"
