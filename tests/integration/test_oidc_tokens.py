"""`shared.oidc.TokenVerifier` against a real issuer: its discovery document and JWKS served over
HTTP by uvicorn, tokens signed with keys generated here, each refusal through the real path."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from shared.oidc import IssuerConfig, IssuerUnavailable, TokenRefused, TokenVerifier
from shared.ports import free_port

AUDIENCE = "painpath-coordinator"


class Issuer:
    """A local OpenID Connect issuer: a discovery document and a JWKS that can be rotated."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.keys = [RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})]
        self.jwks_requests = 0
        self.discovered_issuer = self.url
        app = FastAPI()

        @app.get("/.well-known/openid-configuration")
        def configuration() -> dict:
            return {"issuer": self.discovered_issuer, "jwks_uri": f"{self.url}/jwks"}

        @app.get("/jwks")
        def jwks() -> dict:
            self.jwks_requests += 1
            return KeySet(self.keys).as_dict(private=False)

        self.app = app

    def token(self, key=None, header: dict | None = None, **claims) -> str:
        key = key or self.keys[0]
        now = int(time.time())
        body = {"iss": self.url, "aud": AUDIENCE, "sub": "user-1", "iat": now, "exp": now + 300}
        body.update(claims)
        alg = "ES256" if isinstance(key, ECKey) else "RS256"
        return jwt.encode({"alg": alg, "kid": key.kid, **(header or {})}, body, key)


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    port = free_port()
    issuer = Issuer(port)
    server = uvicorn.Server(
        uvicorn.Config(issuer.app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield issuer
    server.should_exit = True
    await serving


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def verifier(issuer: Issuer, client, clock=None, **options) -> TokenVerifier:
    config = IssuerConfig(issuer=issuer.url, audience=AUDIENCE, **options)
    return TokenVerifier(config, client, **({"clock": clock} if clock else {}))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(TokenRefused) as caught:
        await verifier.verify(token)
    assert not token or token not in str(caught.value)  # never the token itself
    return caught.value.reason


async def test_a_token_of_the_issuer_is_accepted_with_its_claims(issuer, client):
    claims = await verifier(issuer, client).verify(issuer.token(roles=["coordinator"]))
    assert claims["sub"] == "user-1" and claims["roles"] == ["coordinator"]


async def test_an_audience_list_holding_ours_is_accepted(issuer, client):
    token = issuer.token(aud=["another-api", AUDIENCE])
    assert (await verifier(issuer, client).verify(token))["sub"] == "user-1"


# Times as offsets from now, taken when the test runs (the suite may run it minutes after
# collecting it).
@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": -120}, "the token has expired"),
        ({"nbf": 120}, "the token is not valid yet"),
        ({"iat": 600}, "the token is not valid yet"),
        ({"aud": "another-api"}, "the token's aud claim is not ours"),
        ({"iss": "https://elsewhere.example"}, "the token's iss claim is not ours"),
        ({"exp": None}, "the token lacks a required claim"),
    ],
)
async def test_a_token_whose_claims_are_not_ours_is_refused(issuer, client, claims, reason):
    now = int(time.time())
    times = {name: now + claims[name] for name in ("exp", "nbf", "iat") if claims.get(name)}
    token = issuer.token(**(claims | times))
    if "exp" in claims and claims["exp"] is None:  # no exp at all
        token = jwt.encode(
            {"alg": "RS256", "kid": "rsa-1"},
            {"iss": issuer.url, "aud": AUDIENCE, "iat": now},
            issuer.keys[0],
        )
    assert await refused(verifier(issuer, client), token) == reason


async def test_the_clock_skew_allowed_is_the_leeway_and_bounded(issuer, client):
    token = issuer.token(exp=int(time.time()) - 20)
    assert (await verifier(issuer, client, leeway_seconds=60).verify(token))["sub"] == "user-1"
    assert await refused(verifier(issuer, client, leeway_seconds=5), token) == (
        "the token has expired"
    )
    with pytest.raises(ValueError, match="leeway"):
        IssuerConfig(issuer=issuer.url, audience=AUDIENCE, leeway_seconds=3600)


async def test_alg_none_is_refused(issuer, client):
    header = b64(json.dumps({"alg": "none", "kid": "rsa-1"}).encode())
    body = b64(json.dumps({"iss": issuer.url, "aud": AUDIENCE, "exp": 2**31}).encode())
    reason = await refused(verifier(issuer, client), f"{header}.{body}.")
    assert reason == "the token's algorithm is not accepted"


async def test_hs256_signed_with_the_public_key_as_secret_is_refused(issuer, client):
    public_pem = issuer.keys[0].as_pem(private=False)
    header = b64(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
    body = b64(json.dumps({"iss": issuer.url, "aud": AUDIENCE, "exp": 2**31}).encode())
    signature = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    reason = await refused(verifier(issuer, client), f"{header}.{body}.{b64(signature)}")
    assert reason == "the token's algorithm is not accepted"
    with pytest.raises(ValueError, match="asymmetric"):
        IssuerConfig(issuer=issuer.url, audience=AUDIENCE, algorithms=("RS256", "HS256"))


async def test_a_signature_by_another_key_with_the_issuer_s_kid_is_refused(issuer, client):
    forger = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    assert await refused(verifier(issuer, client), issuer.token(key=forger)) == (
        "the token's signature does not verify"
    )


async def test_garbage_is_refused_as_malformed(issuer, client):
    check = verifier(issuer, client)
    for token in ("not-a-jwt", "a.b.c", "ey.ey.ey", "x" * 20_000, ""):
        assert "the token" in await refused(check, token)


async def test_a_new_key_is_fetched_once_and_a_key_rotated_out_refuses_its_tokens(issuer, client):
    clock = Clock()
    check = verifier(issuer, client, clock=clock, min_refresh_seconds=10)
    old = issuer.token()
    assert (await check.verify(old))["sub"] == "user-1"
    assert issuer.jwks_requests == 1

    # The issuer rotates: a new key beside the old one, then the old one gone.
    new_key = ECKey.generate_key("P-256", parameters={"kid": "ec-2"})
    issuer.keys.append(new_key)
    clock.now += 11
    assert (await check.verify(issuer.token(key=new_key)))[
        "sub"
    ] == "user-1"  # unknown kid: fetched
    assert issuer.jwks_requests == 2
    issuer.keys = [new_key]
    clock.now += 301  # the cached set's age runs out
    assert await refused(check, old) == "the token's key is not one of the issuer's"
    assert issuer.jwks_requests == 3


async def test_a_flood_of_unknown_kids_fetches_the_keys_at_most_once_per_refresh(issuer, client):
    clock = Clock()
    check = verifier(issuer, client, clock=clock, min_refresh_seconds=10)
    await check.verify(issuer.token())
    strangers = [ECKey.generate_key("P-256", parameters={"kid": f"made-up-{n}"}) for n in range(3)]
    for number in range(50):
        stranger = strangers[number % 3]
        assert await refused(check, issuer.token(key=stranger)) == (
            "the token's key is not one of the issuer's"
        )
        clock.now += 0.1
    assert issuer.jwks_requests == 1  # 5 s of floods: within one refresh interval
    clock.now += 10
    await refused(check, issuer.token(key=stranger))
    assert issuer.jwks_requests == 2


async def test_a_discovery_document_of_another_issuer_is_not_trusted(issuer, client):
    issuer.discovered_issuer = "https://elsewhere.example"
    with pytest.raises(IssuerUnavailable):
        await verifier(issuer, client).verify(issuer.token())
    assert issuer.jwks_requests == 0


async def test_an_unreachable_issuer_is_unavailable_not_a_refusal(client):
    config = IssuerConfig(issuer=f"http://127.0.0.1:{free_port()}", audience=AUDIENCE)
    check = TokenVerifier(config, client)
    with pytest.raises(IssuerUnavailable):
        await check.verify("eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
    with pytest.raises(IssuerUnavailable, match="tried just now"):  # not asked again at once
        await check.verify("eyJhbGciOiJSUzI1NiJ9.e30.c2ln")


async def test_cached_keys_stay_in_use_while_the_issuer_is_down(issuer, client):
    clock = Clock()
    check = verifier(issuer, client, clock=clock)
    token = issuer.token()
    await check.verify(token)
    issuer.app.router.routes.clear()  # the issuer now answers 404 to everything
    clock.now += 301
    assert (await check.verify(token))["sub"] == "user-1"
