"""The security-standard profile (pure): what a generated key may be, per use.

A request names a use and optionally an algorithm, a size and a lifetime; ``Profile.check``
fills in the defaults and refuses anything outside the profile with the rule it breaks, so an
engineer never has to know the standard to follow it. Algorithm names are read the way people
type them (``rsa``, ``hmac``, ``ed25519``, ``ec``): ``resolve_algorithm`` maps them to the
canonical names the profile and the stored specs use.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kmsd.errors import ConfigError, InvalidInput

USES = (
    "storage-encryption",
    "transport-encryption",
    "key-agreement",
    "signing",
    "mac",
    "password",
)
# Algorithms kmsd can generate, and which size parameter (if any) they take.
SIZED = {"RSA-PSS": "bits", "HMAC-SHA256": "bits", "HMAC-SHA512": "bits", "password": "length"}
KNOWN = frozenset(
    {
        "AES-256-GCM",
        "ChaCha20-Poly1305",
        "X25519",
        "ECDH-P256",
        "ECDH-P384",
        "Ed25519",
        "ECDSA-P256",
        "ECDSA-P384",
        "RSA-PSS",
        "HMAC-SHA256",
        "HMAC-SHA512",
        "password",
    }
)

# Names people type for an algorithm (compared lower-case, with "_" and spaces read as "-"),
# each with its candidates in order of preference: ``resolve_algorithm`` takes the first one
# the use allows, so "ec" is ECDSA-P256 for signing and ECDH-P256 for key agreement.
ALIASES: dict[str, tuple[str, ...]] = {
    "rsa": ("RSA-PSS",),
    "rsapss": ("RSA-PSS",),
    "ps256": ("RSA-PSS",),
    "hmac": ("HMAC-SHA256", "HMAC-SHA512"),
    "hmac256": ("HMAC-SHA256",),
    "hmac-256": ("HMAC-SHA256",),
    "hmac-sha-256": ("HMAC-SHA256",),
    "hs256": ("HMAC-SHA256",),
    "hmac512": ("HMAC-SHA512",),
    "hmac-512": ("HMAC-SHA512",),
    "hmac-sha-512": ("HMAC-SHA512",),
    "hs512": ("HMAC-SHA512",),
    "ec": ("ECDSA-P256", "ECDH-P256"),
    "p256": ("ECDSA-P256", "ECDH-P256"),
    "p-256": ("ECDSA-P256", "ECDH-P256"),
    "p384": ("ECDSA-P384", "ECDH-P384"),
    "p-384": ("ECDSA-P384", "ECDH-P384"),
    "ecdsa": ("ECDSA-P256", "ECDSA-P384"),
    "es256": ("ECDSA-P256",),
    "es384": ("ECDSA-P384",),
    "ecdh": ("ECDH-P256", "ECDH-P384"),
    "eddsa": ("Ed25519",),
    "aes": ("AES-256-GCM",),
    "aes256": ("AES-256-GCM",),
    "aes-256": ("AES-256-GCM",),
    "aes-gcm": ("AES-256-GCM",),
    "aes256gcm": ("AES-256-GCM",),
    "chacha": ("ChaCha20-Poly1305",),
    "chacha20": ("ChaCha20-Poly1305",),
    "curve25519": ("X25519",),
}
_BY_LOWER = {name.lower(): name for name in KNOWN}


def fold_algorithm(name: str) -> str:
    """``name`` as the alias table spells it: lower case, ``-`` for ``_`` and spaces."""
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def resolve_algorithm(name: str, allowed: Sequence[str] = ()) -> str | None:
    """The canonical name for ``name`` (any case, or an alias), preferring one in ``allowed``.

    None when the name is neither a known algorithm nor an alias.
    """
    key = fold_algorithm(name)
    if key in _BY_LOWER:
        return _BY_LOWER[key]
    candidates = ALIASES.get(key)
    if candidates is None:
        return None
    return next((c for c in candidates if c in allowed), candidates[0])


def algorithm_names() -> list[str]:
    """Every spelling ``resolve_algorithm`` knows: the canonical names, then the aliases."""
    return [*sorted(KNOWN), *ALIASES]


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A checked request: everything needed to generate the key."""

    use: str
    algorithm: str
    size: int | None  # bits for RSA/HMAC, characters for passwords, None when fixed
    lifetime_days: int
    alphabet: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "use": self.use,
            "algorithm": self.algorithm,
            "size": self.size,
            "lifetime_days": self.lifetime_days,
        }


@dataclass(frozen=True, slots=True)
class UseRule:
    algorithms: tuple[str, ...]
    max_lifetime_days: int
    default_lifetime_days: int
    min_size: int | None = None
    max_size: int | None = None
    default_size: int | None = None
    alphabet: str = ""


# Hand-made secrets expire too (they cannot rotate themselves, so they are reported instead).
DEFAULT_HAND_MADE_LIFETIME_DAYS = 365


class Profile:
    def __init__(
        self,
        rules: Mapping[str, UseRule],
        hand_made_lifetime_days: int = DEFAULT_HAND_MADE_LIFETIME_DAYS,
    ) -> None:
        self.rules = dict(rules)
        self.hand_made_lifetime_days = hand_made_lifetime_days

    @classmethod
    def from_toml(cls, text: str, source: str = "profile") -> Profile:
        """Parse and validate a profile; a broken one stops kmsd at start-up."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML ({exc})") from None
        rules: dict[str, UseRule] = {}
        hand_made = doc.pop("hand-made", {})
        try:
            lifetime = int(hand_made.get("default_lifetime_days", DEFAULT_HAND_MADE_LIFETIME_DAYS))
        except (TypeError, ValueError, AttributeError):
            raise ConfigError(
                f"{source}: hand-made.default_lifetime_days must be a number"
            ) from None
        if not 1 <= lifetime <= 3650:
            raise ConfigError(f"{source}: hand-made.default_lifetime_days must be 1-3650")
        for use, raw in doc.items():
            if use not in USES:
                raise ConfigError(f"{source}: unknown use {use!r} (uses: {', '.join(USES)})")
            rules[use] = _rule(use, raw, source)
        missing = [u for u in USES if u not in rules]
        if missing:
            raise ConfigError(f"{source}: no rules for {', '.join(missing)}")
        return cls(rules, lifetime)

    def check(
        self,
        use: str,
        algorithm: str | None = None,
        size: int | None = None,
        lifetime_days: int | None = None,
    ) -> KeySpec:
        """Return the full spec for a request, or raise InvalidInput naming the broken rule."""
        rule = self.rules.get(use.strip().lower())
        if rule is None:
            raise InvalidInput(f"unknown use {use!r}; uses are {', '.join(USES)}")
        use = use.strip().lower()
        if algorithm:
            algorithm = resolve_algorithm(algorithm, rule.algorithms) or algorithm
        else:
            algorithm = rule.algorithms[0]
        if algorithm not in rule.algorithms:
            raise InvalidInput(
                f"{algorithm!r} is not allowed for {use}: the profile allows "
                f"{', '.join(rule.algorithms)}",
                rule=f"{use}.algorithms",
            )
        if algorithm in SIZED:
            size = rule.default_size if size is None else size
            assert rule.min_size is not None
            assert rule.max_size is not None
            unit = "characters" if SIZED[algorithm] == "length" else "bits"
            if size is None or not rule.min_size <= size <= rule.max_size:
                raise InvalidInput(
                    f"{algorithm} for {use} must be {rule.min_size}-{rule.max_size} {unit}, "
                    f"got {size}",
                    rule=f"{use}.min_{'length' if unit == 'characters' else 'bits'}",
                )
            if algorithm.startswith("HMAC") and size % 8:
                raise InvalidInput("HMAC key sizes are whole bytes (a multiple of 8 bits)")
        elif size is not None:
            raise InvalidInput(f"{algorithm} has a fixed size; leave --length out")
        lifetime = rule.default_lifetime_days if lifetime_days is None else lifetime_days
        if not 1 <= lifetime <= rule.max_lifetime_days:
            raise InvalidInput(
                f"a {use} key may live at most {rule.max_lifetime_days} days, asked {lifetime}",
                rule=f"{use}.max_lifetime_days",
            )
        return KeySpec(use, algorithm, size, lifetime, rule.alphabet)


def _rule(use: str, raw: Any, source: str) -> UseRule:
    try:
        algorithms = tuple(raw["algorithms"])
        unknown = [a for a in algorithms if a not in KNOWN]
        if unknown or not algorithms:
            raise ConfigError(f"{source}: {use}: unknown algorithm(s) {unknown}")
        sized_by = "length" if use == "password" else "bits"
        rule = UseRule(
            algorithms=algorithms,
            max_lifetime_days=int(raw["max_lifetime_days"]),
            default_lifetime_days=int(raw["default_lifetime_days"]),
            min_size=raw.get(f"min_{sized_by}"),
            max_size=raw.get(f"max_{sized_by}"),
            default_size=raw.get(f"default_{sized_by}"),
            alphabet=str(raw.get("alphabet", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {use}: missing or malformed setting ({exc})") from None
    if any(a in SIZED for a in algorithms) and None in (
        rule.min_size,
        rule.max_size,
        rule.default_size,
    ):
        raise ConfigError(f"{source}: {use}: needs min_, max_ and default_{sized_by}")
    if use == "password" and len(set(rule.alphabet)) < 32:
        raise ConfigError(f"{source}: password alphabet must have at least 32 distinct characters")
    return rule


def load_profile(path: str | None) -> Profile:
    """Load the profile at ``path``, or the default shipped with kmsd."""
    from importlib import resources

    if path is None:
        text = (resources.files("kmsd") / "profiles" / "default.toml").read_text()
        return Profile.from_toml(text, "default profile")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"KMSD_SECURITY_PROFILE: cannot read {path}: {exc.strerror}") from None
    return Profile.from_toml(text, path)
