"""Algorithm names in any case and common aliases, for the API (profile) and for kmsctl."""

from __future__ import annotations

import argparse

import pytest

from kmsd.cli import parsing
from kmsd.domain.profile import KNOWN, Profile, load_profile, resolve_algorithm
from kmsd.errors import InvalidInput


@pytest.fixture(scope="module")
def profile() -> Profile:
    return load_profile(None)


@pytest.mark.parametrize(
    ("name", "allowed", "expected"),
    [
        ("RSA-PSS", (), "RSA-PSS"),
        ("rsa-pss", (), "RSA-PSS"),
        ("RSA", (), "RSA-PSS"),
        ("rsa", (), "RSA-PSS"),
        ("hmac", (), "HMAC-SHA256"),
        ("HMAC_SHA512", (), "HMAC-SHA512"),
        ("hs512", (), "HMAC-SHA512"),
        ("ed25519", (), "Ed25519"),
        ("EdDSA", (), "Ed25519"),
        ("aes", (), "AES-256-GCM"),
        ("chacha20", (), "ChaCha20-Poly1305"),
        ("x25519", (), "X25519"),
        ("PASSWORD", (), "password"),
        # An alias with several meanings takes the first the use allows.
        ("ec", (), "ECDSA-P256"),
        ("ec", ("X25519", "ECDH-P256", "ECDH-P384"), "ECDH-P256"),
        ("ecdsa", ("ECDSA-P384",), "ECDSA-P384"),
        ("p384", ("ECDH-P384",), "ECDH-P384"),
        ("rot13", (), None),
    ],
)
def test_resolve_algorithm(name: str, allowed: tuple[str, ...], expected: str | None) -> None:
    assert resolve_algorithm(name, allowed) == expected


def test_every_canonical_name_resolves_to_itself_in_any_case() -> None:
    for name in KNOWN:
        assert resolve_algorithm(name.upper()) == name
        assert resolve_algorithm(name.lower()) == name


@pytest.mark.parametrize(
    ("use", "algorithm", "expected"),
    [
        ("signing", "RSA", "RSA-PSS"),  # the README's "RSA"
        ("signing", "ec", "ECDSA-P256"),
        ("key-agreement", "ec", "ECDH-P256"),
        ("mac", "hmac", "HMAC-SHA256"),
        ("storage-encryption", "aes", "AES-256-GCM"),
        ("SIGNING", "ed25519", "Ed25519"),
    ],
)
def test_the_profile_accepts_aliases(
    profile: Profile, use: str, algorithm: str, expected: str
) -> None:
    spec = profile.check(use, algorithm)
    assert spec.algorithm == expected
    assert spec.use == use.lower()


def test_an_alias_still_meets_the_rules(profile: Profile) -> None:
    # README: "RSA below 3072 bits ... is refused with the rule it breaks".
    with pytest.raises(InvalidInput, match="3072-8192 bits"):
        profile.check("signing", "rsa", size=2048)
    with pytest.raises(InvalidInput, match="not allowed for mac"):
        profile.check("mac", "rsa")


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        ("rsa", "RSA-PSS"),
        ("Ed25519", "Ed25519"),
        ("hmac-sha512", "HMAC-SHA512"),
        ("ec", "ec"),  # several candidates: kmsd picks by the use's rule
    ],
)
def test_kmsctl_sends_the_canonical_name_when_it_is_certain(text: str, sent: str) -> None:
    assert parsing.algorithm(text) == sent


def test_kmsctl_refuses_an_unknown_algorithm_with_a_suggestion() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="did you mean Ed25519"):
        parsing.algorithm("ed2559")
