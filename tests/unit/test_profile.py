"""The security profile: defaults, refusals naming their rule, and a broken profile stops kmsd."""

from __future__ import annotations

import pytest

from kmsd.domain.profile import USES, Profile, load_profile
from kmsd.errors import ConfigError, InvalidInput

DEFAULT = load_profile(None)


@pytest.mark.parametrize(
    ("use", "algorithm", "size", "lifetime"),
    [
        ("storage-encryption", "AES-256-GCM", None, 365),
        ("transport-encryption", "AES-256-GCM", None, 90),
        ("key-agreement", "X25519", None, 365),
        ("signing", "Ed25519", None, 365),
        ("mac", "HMAC-SHA256", 256, 365),
        ("password", "password", 32, 90),
    ],
)
def test_defaults(use: str, algorithm: str, size: int | None, lifetime: int) -> None:
    spec = DEFAULT.check(use)
    assert (spec.algorithm, spec.size, spec.lifetime_days) == (algorithm, size, lifetime)


def test_rsa_takes_the_default_size_and_bounds() -> None:
    assert DEFAULT.check("signing", "RSA-PSS").size == 3072
    assert DEFAULT.check("signing", "RSA-PSS", 4096).size == 4096
    with pytest.raises(InvalidInput) as err:
        DEFAULT.check("signing", "RSA-PSS", 2048)
    assert err.value.extra["rule"] == "signing.min_bits"


@pytest.mark.parametrize(
    ("args", "rule"),
    [
        (("signing", "RSA-PSS", 16384), "signing.min_bits"),
        (("storage-encryption", None, None, 731), "storage-encryption.max_lifetime_days"),
        (("storage-encryption", None, None, 0), "storage-encryption.max_lifetime_days"),
        (("key-agreement", "RSA-PSS"), "key-agreement.algorithms"),
        (("password", None, 31), "password.min_length"),
    ],
)
def test_refusals_name_the_rule(args: tuple[object, ...], rule: str) -> None:
    with pytest.raises(InvalidInput) as err:
        DEFAULT.check(*args)  # type: ignore[arg-type]
    assert err.value.extra["rule"] == rule


def test_every_use_has_rules() -> None:
    assert set(DEFAULT.rules) == set(USES)


BROKEN = [
    ("not toml [", "not valid TOML"),
    ('[telepathy]\nalgorithms = ["x"]', "unknown use"),
    (
        '[signing]\nalgorithms = ["Ed25519"]\nmax_lifetime_days = 1\ndefault_lifetime_days = 1',
        "no rules for",
    ),
]


@pytest.mark.parametrize(("text", "phrase"), BROKEN)
def test_a_broken_profile_is_a_config_error(text: str, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        Profile.from_toml(text)


def test_unreadable_profile_path() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_profile("/nonexistent/profile.toml")


def test_hand_made_lifetime() -> None:
    assert DEFAULT.hand_made_lifetime_days == 365
    with pytest.raises(ConfigError, match="hand-made"):
        Profile.from_toml("[hand-made]\ndefault_lifetime_days = 0\n")
