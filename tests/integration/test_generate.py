"""Generated keys: every use and allowed algorithm yields a working key, read back from SM."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from kmsd.domain.profile import load_profile
from tests.integration.conftest import Api, snapshot

PROFILE = load_profile(None)
CASES = [(use, alg) for use, rule in PROFILE.rules.items() for alg in rule.algorithms]


def _works(doc: dict[str, Any], public_pem: str | None) -> None:
    """Use the key the way its use says, proving the material is real and well encoded."""
    alg = doc["algorithm"]
    if alg == "AES-256-GCM":
        key, nonce = base64.b64decode(doc["key"]), os.urandom(12)
        assert len(key) == 32
        box = AESGCM(key).encrypt(nonce, b"payload", b"ad")
        assert AESGCM(key).decrypt(nonce, box, b"ad") == b"payload"
    elif alg == "ChaCha20-Poly1305":
        key, nonce = base64.b64decode(doc["key"]), os.urandom(12)
        box = ChaCha20Poly1305(key).encrypt(nonce, b"payload", None)
        assert ChaCha20Poly1305(key).decrypt(nonce, box, None) == b"payload"
    elif alg.startswith("HMAC"):
        key = base64.b64decode(doc["key"])
        assert len(key) * 8 == doc["size"]
        digest = hashlib.sha256 if alg == "HMAC-SHA256" else hashlib.sha512
        tag = hmac.new(key, b"message", digest).digest()
        assert hmac.compare_digest(tag, hmac.new(key, b"message", digest).digest())
    elif alg == "password":
        assert len(doc["password"]) == doc["size"] >= 32
        assert set(doc["password"]) <= set(PROFILE.rules["password"].alphabet)
    else:
        assert public_pem == doc["public_key_pem"]
        private = serialization.load_pem_private_key(doc["private_key_pem"].encode(), None)
        public = serialization.load_pem_public_key(public_pem.encode())
        if alg == "Ed25519":
            assert isinstance(private, ed25519.Ed25519PrivateKey)
            public.verify(private.sign(b"m"), b"m")  # type: ignore[call-arg,union-attr]
        elif alg.startswith("ECDSA"):
            assert isinstance(private, ec.EllipticCurvePrivateKey)
            sig = private.sign(b"m", ec.ECDSA(hashes.SHA256()))
            public.verify(sig, b"m", ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg,union-attr]
        elif alg == "RSA-PSS":
            assert isinstance(private, rsa.RSAPrivateKey)
            assert private.key_size == doc["size"] >= 3072
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            public.verify(private.sign(b"m", pss, hashes.SHA256()), b"m", pss, hashes.SHA256())  # type: ignore[call-arg,union-attr,arg-type]
        elif alg == "X25519":
            assert isinstance(private, x25519.X25519PrivateKey)
            peer = x25519.X25519PrivateKey.generate()
            assert private.exchange(peer.public_key()) == peer.exchange(public)  # type: ignore[arg-type]
        else:  # ECDH-P256 / ECDH-P384
            assert isinstance(private, ec.EllipticCurvePrivateKey)
            peer = ec.generate_private_key(private.curve)
            ours = private.exchange(ec.ECDH(), peer.public_key())
            assert ours == peer.exchange(ec.ECDH(), public)  # type: ignore[arg-type]


@pytest.mark.parametrize(("use", "algorithm"), CASES, ids=[f"{u}-{a}" for u, a in CASES])
async def test_every_use_and_algorithm_makes_a_working_key(
    api: Api, sm_client: Any, use: str, algorithm: str
) -> None:
    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    made = await api.ok(
        "POST", "/v1/generate/prod/pay/k", json={"use": use, "algorithm": algorithm}
    )
    assert made["generated"]["algorithm"] == algorithm
    stored = sm_client.get_secret_value(SecretId=made["sm_arn"], VersionId=made["version_id"])
    doc = json.loads(stored["SecretString"])
    assert (doc["use"], doc["algorithm"]) == (use, algorithm)
    meta = await api.ok("GET", "/v1/secrets/prod/pay/k")
    assert meta["generated"] == made["generated"]
    expires = datetime.fromisoformat(meta["expires_at"])
    lifetime = timedelta(days=made["generated"]["lifetime_days"])
    assert abs(expires - (datetime.now(UTC) + lifetime)) < timedelta(minutes=1)
    _works(doc, meta["public_key_pem"])
    # The metadata never carries the private half.
    assert "PRIVATE KEY" not in json.dumps(meta) + json.dumps(made)


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        ({"use": "signing", "algorithm": "RSA-PSS", "length": 2048}, "3072-8192 bits"),
        ({"use": "storage-encryption", "lifetime_days": 5000}, "at most 730 days"),
        ({"use": "signing", "algorithm": "DSA"}, "not allowed for signing"),
        ({"use": "storage-encryption", "algorithm": "AES-128-GCM"}, "not allowed"),
        ({"use": "telepathy"}, "unknown use"),
        ({"use": "password", "length": 16}, "32-128 characters"),
        ({"use": "mac", "length": 260}, "multiple of 8"),
        ({"use": "signing", "algorithm": "Ed25519", "length": 256}, "fixed size"),
        ({"use": "mac", "length": "256"}, "integer"),
        ({"use": "mac", "colour": "blue"}, "unknown field"),
    ],
)
async def test_requests_outside_the_profile_are_refused(
    api: Api, db: asyncpg.Connection, body: dict[str, Any], phrase: str
) -> None:
    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    before = await snapshot(db)
    status, problem = await api.call("POST", "/v1/generate/prod/pay/k", json=body)
    assert status == 400, problem
    assert phrase in problem["detail"]
    assert await snapshot(db) == before


async def test_a_manual_put_over_a_generated_key_drops_its_spec(api: Api) -> None:
    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    await api.ok("POST", "/v1/generate/prod/pay/k", json={"use": "signing"})
    await api.put_json("prod/pay/k", {"hand": "made"})
    meta = await api.ok("GET", "/v1/secrets/prod/pay/k")
    assert (meta["generated"], meta["public_key_pem"]) == (None, None)
