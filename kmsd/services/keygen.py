"""Key material for generated secrets, made with ``cryptography`` and ``secrets``.

The result is the JSON document kmsd writes to Secrets Manager (and then forgets): the spec,
created/expires dates and the key in a standard encoding - base64 for symmetric keys, PKCS#8
PEM for private keys with the SubjectPublicKeyInfo PEM beside it. The public half is also
returned apart, to be kept as metadata (it is not secret).
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519

from kmsd.domain.profile import KeySpec

_CURVES: dict[str, ec.EllipticCurve] = {
    "ECDH-P256": ec.SECP256R1(),
    "ECDH-P384": ec.SECP384R1(),
    "ECDSA-P256": ec.SECP256R1(),
    "ECDSA-P384": ec.SECP384R1(),
}
_SYMMETRIC_BITS = {"AES-256-GCM": 256, "ChaCha20-Poly1305": 256}


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    document: dict[str, Any]
    public_key_pem: str | None


def generate(spec: KeySpec, now: datetime) -> GeneratedKey:
    """Make a key for ``spec`` (CPU-heavy for RSA: run it off the event loop)."""
    doc: dict[str, Any] = {
        **spec.as_dict(),
        "created": now.isoformat(),
        "expires": (now + timedelta(days=spec.lifetime_days)).isoformat(),
    }
    algorithm = spec.algorithm
    if algorithm in _SYMMETRIC_BITS:
        doc["key"] = _b64(secrets.token_bytes(_SYMMETRIC_BITS[algorithm] // 8))
        return GeneratedKey(doc, None)
    if algorithm.startswith("HMAC"):
        assert spec.size is not None
        doc["key"] = _b64(secrets.token_bytes(spec.size // 8))
        return GeneratedKey(doc, None)
    if algorithm == "password":
        assert spec.size is not None
        doc["password"] = "".join(secrets.choice(spec.alphabet) for _ in range(spec.size))
        return GeneratedKey(doc, None)
    private = _private_key(spec)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    doc["private_key_pem"] = pem
    doc["public_key_pem"] = public
    return GeneratedKey(doc, public)


def _private_key(spec: KeySpec) -> Any:
    if spec.algorithm == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if spec.algorithm == "X25519":
        return x25519.X25519PrivateKey.generate()
    if spec.algorithm in _CURVES:
        return ec.generate_private_key(_CURVES[spec.algorithm])
    if spec.algorithm == "RSA-PSS":
        assert spec.size is not None
        return rsa.generate_private_key(public_exponent=65537, key_size=spec.size)
    raise ValueError(f"no generator for {spec.algorithm}")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
