"""Bearer tokens from an OpenID Connect issuer: JWTs verified against the issuer's own keys.

The first part of issue 14, not wired into the services yet: one `TokenVerifier` per issuer.

- **Keys**: the issuer's JWKS, its address discovered from
  `{issuer}/.well-known/openid-configuration` (whose `issuer` must be the configured one, OpenID
  Connect Discovery 1.0 section 4.3) unless given. The set is cached for `jwks_max_age_seconds`;
  a token whose `kid` is not in it makes the verifier fetch the set again at once (the issuer
  rotated its keys), but at most once every `min_refresh_seconds`, so that tokens with made-up
  `kid`s cannot make it hammer the issuer. A key that left the set is forgotten with it: a token
  signed by a key rotated out is refused.
- **Signatures** by joserfc. Only the asymmetric algorithms configured are accepted: never
  `none`, never an HMAC (a token "signed" with the issuer's public key as an HMAC secret is
  refused for its algorithm before any key is tried).
- **Claims**: `iss` and `aud` must match (an `aud` list must hold ours), `exp` is required,
  `nbf` and `iat` are honoured, all with a leeway of at most `MAX_LEEWAY_SECONDS`.

A refusal raises `TokenRefused`, whose reason names the check that failed and never the token,
a claim's value or a key: the HTTP layer answers 401 with it. An issuer that cannot be reached,
with no keys cached, raises `IssuerUnavailable` (the HTTP layer answers 503: the token may be
good); with keys cached, they stay in use and the failure is logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from joserfc import errors, jwt
from joserfc.jwk import KeySet

from shared.logging import SafeMessage, get_logger

log = get_logger(__name__)

MAX_LEEWAY_SECONDS = 300  # clock skew tolerated at most, whatever the configuration says
MAX_TOKEN_BYTES = 16 * 1024  # a bearer token longer than this is refused unread
PRIVATE_PARTS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})  # of RSA, EC and OKP keys
ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class TokenRefused(SafeMessage, Exception):
    """The token is not one we accept; `reason` names the check (safe to answer and to log)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class IssuerUnavailable(SafeMessage, Exception):
    """The issuer's configuration or keys could not be had, and none are cached."""


@dataclass(frozen=True)
class IssuerConfig:
    issuer: str
    audience: str
    jwks_uri: str | None = None  # None: discovered from the issuer's configuration
    algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256")
    leeway_seconds: float = 60
    jwks_max_age_seconds: float = 300
    min_refresh_seconds: float = 10

    def __post_init__(self) -> None:
        if not self.issuer or not self.audience:
            raise ValueError("an issuer and an audience are required")
        refused = set(self.algorithms) - ASYMMETRIC
        if refused or not self.algorithms:
            raise ValueError(f"only asymmetric algorithms are accepted, not {sorted(refused)}")
        if not 0 <= self.leeway_seconds <= MAX_LEEWAY_SECONDS:
            raise ValueError(f"the leeway must be between 0 and {MAX_LEEWAY_SECONDS} s")


# What each joserfc refusal says; the most specific class first.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (errors.ExpiredTokenError, "the token has expired"),
    (errors.InvalidKeyIdError, "the token's key is not one of the issuer's"),
    (errors.UnsupportedAlgorithmError, "the token's algorithm is not accepted"),
    (errors.BadSignatureError, "the token's signature does not verify"),
    (errors.MissingClaimError, "the token lacks a required claim"),
    (errors.DecodeError, "the token is not a well-formed JWT"),
)


class TokenVerifier:
    """Verifies the bearer tokens of one issuer (see the module docstring)."""

    def __init__(
        self,
        config: IssuerConfig,
        client: httpx.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self._client = client
        self._clock = clock
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")
        self._jwks_uri = config.jwks_uri
        self._claims = jwt.JWTClaimsRegistry(
            leeway=int(config.leeway_seconds),
            iss={"essential": True, "value": config.issuer},
            aud={"essential": True, "value": config.audience},
            exp={"essential": True},
        )

    async def verify(self, token: str) -> dict[str, object]:
        """The token's claims, or TokenRefused."""
        if not token or len(token) > MAX_TOKEN_BYTES:
            raise TokenRefused("the token is empty or too long")
        keys = await self._key_set()
        try:
            try:
                decoded = self._decode(token, keys)
            except errors.InvalidKeyIdError:
                if not self._may_refresh():
                    raise
                decoded = self._decode(token, await self._key_set(refresh=True))
            self._claims.validate(decoded.claims)
        except errors.InvalidClaimError as error:  # `claim` is one of ours, never the token's
            if error.claim in ("nbf", "iat"):
                raise TokenRefused("the token is not valid yet") from None
            raise TokenRefused(f"the token's {error.claim} claim is not ours") from None
        except errors.JoseError as error:
            raise TokenRefused(_reason(error)) from None
        return dict(decoded.claims)

    def _decode(self, token: str, keys: KeySet):
        try:
            return jwt.decode(token, keys, algorithms=list(self.config.algorithms))
        except (ValueError, TypeError, KeyError):  # what joserfc lets through of a bad input
            raise TokenRefused("the token is not a well-formed JWT") from None

    def _may_refresh(self) -> bool:
        return self._clock() - self._fetched_at >= self.config.min_refresh_seconds

    async def _key_set(self, refresh: bool = False) -> KeySet:
        since = self._clock() - self._fetched_at
        if self._keys is not None and since < self.config.jwks_max_age_seconds and not refresh:
            return self._keys
        if self._keys is None and since < self.config.min_refresh_seconds:
            raise IssuerUnavailable("the issuer's keys could not be fetched (tried just now)")
        try:
            self._keys = await self._fetch_keys()
        except (httpx.HTTPError, ValueError, errors.JoseError) as error:
            if self._keys is None:
                raise IssuerUnavailable(
                    f"the issuer's keys could not be fetched ({type(error).__name__})"
                ) from None
            log.warning("issuer_keys_not_refreshed", error=type(error).__name__)
        finally:
            self._fetched_at = self._clock()
        return self._keys

    async def _fetch_keys(self) -> KeySet:
        if self._jwks_uri is None:
            response = await self._client.get(
                self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
            )
            response.raise_for_status()
            document = response.json()
            if not isinstance(document, dict) or document.get("issuer") != self.config.issuer:
                raise ValueError("the discovered configuration is of another issuer")
            if not isinstance(document.get("jwks_uri"), str):
                raise ValueError("the discovered configuration has no jwks_uri")
            self._jwks_uri = document["jwks_uri"]
        response = await self._client.get(self._jwks_uri)
        response.raise_for_status()
        published = response.json()
        if not isinstance(published, dict) or not isinstance(published.get("keys"), list):
            raise ValueError("the issuer's JWKS has no keys")
        # Public keys only, and only those that can verify: a private part is dropped.
        public = [
            {name: value for name, value in key.items() if name not in PRIVATE_PARTS}
            for key in published["keys"]
            if isinstance(key, dict) and key.get("kty") in ("RSA", "EC", "OKP")
        ]
        return KeySet.import_key_set({"keys": public})


def _reason(error: Exception) -> str:
    for kind, reason in _REASONS:
        if isinstance(error, kind):
            return reason
    return "the token is refused"
