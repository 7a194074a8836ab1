"""Access decisions as tables: bindings, implication, CIDR fences, proxies."""

from __future__ import annotations

import ipaddress

import pytest

from kmsd.domain.access import (
    GRANTS,
    PERMISSIONS,
    Binding,
    check_pattern,
    client_ip,
    covers,
    decide,
    parse_cidrs,
)
from kmsd.errors import InvalidInput

A = "arn:aws:iam::111111111111:role/pay-host"
OPS = "arn:aws:iam::111111111111:user/ops"
B = [
    Binding(1, "arn:aws:iam::111111111111:role/pay-*", "prod/pay", "read"),
    Binding(2, OPS, "prod", "view"),
    Binding(3, OPS, "prod/pay", "edit"),
    Binding(
        4, "arn:aws:iam::111111111111:role/fenced", "prod/pay", "read", parse_cidrs(["10.0.0.0/8"])
    ),
    Binding(5, "arn:aws:iam::111111111111:role/fenced", "prod/pay/us", "admin"),
]
IP = ipaddress.ip_address("10.1.1.1")
OUT = ipaddress.ip_address("192.168.1.1")


@pytest.mark.parametrize(
    ("arn", "path", "needed", "ip", "allowed"),
    [
        (A, "prod/pay", "read", IP, True),
        (A, "prod/pay/us/blue", "read", IP, True),
        (A, "prod/payments", "read", IP, False),  # segment-wise prefix
        (A, "prod", "read", IP, False),  # a longer prefix grants nothing above it
        (A, "prod/pay", "view", IP, False),  # read is not view
        (A, "prod/shop", "read", IP, False),
        ("arn:aws:iam::222222222222:role/pay-host", "prod/pay", "read", IP, False),
        ("arn:aws:iam::111111111111:role/shop-host", "prod/pay", "read", IP, False),
        (OPS, "prod/shop", "view", IP, True),
        (OPS, "prod/shop", "read", IP, True),  # view implies read
        (OPS, "prod/shop", "edit", IP, False),
        (OPS, "prod/pay/us", "edit", IP, True),
        (OPS, "prod/pay", "admin", IP, False),  # edit cannot change bindings
        (OPS, "prod/pay", "rotate", IP, False),
        ("arn:aws:iam::111111111111:role/fenced", "prod/pay", "read", IP, True),
        ("arn:aws:iam::111111111111:role/fenced", "prod/pay", "read", OUT, False),
        ("arn:aws:iam::111111111111:role/fenced", "prod/pay", "read", None, False),
        # the admin binding on prod/pay/us does not widen prod/pay's CIDR fence
        ("arn:aws:iam::111111111111:role/fenced", "prod/pay/us", "admin", OUT, False),
        ("arn:aws:iam::111111111111:role/fenced", "prod/pay/us", "admin", IP, True),
    ],
)
def test_decide(arn: str, path: str, needed: str, ip: object, allowed: bool) -> None:
    decision = decide(arn, path, needed, ip=ip, bindings=B)  # type: ignore[arg-type]
    assert decision.allowed is allowed, decision.reason


def test_bootstrap_admins_pass_everything() -> None:
    d = decide(OPS, "any/where", "admin", ip=None, bindings=[], admins=[OPS])
    assert d.allowed
    assert "KMSD_ADMINS" in d.reason


def test_deny_by_default() -> None:
    assert not decide(A, "prod/pay", "read", ip=IP, bindings=[]).allowed


def test_root_prefix_covers_everything() -> None:
    root = [Binding(9, OPS, "*", "admin")]
    assert decide(OPS, "x/y/z", "admin", ip=IP, bindings=root).allowed


@pytest.mark.parametrize("permission", PERMISSIONS)
def test_admin_implies_every_permission(permission: str) -> None:
    assert permission in GRANTS["admin"]
    assert permission in GRANTS[permission]


@pytest.mark.parametrize(
    ("prefix", "path", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/b/c", True),
        ("a/b", "a/bc", False),
        ("a/b", "a", False),
        ("*", "a", True),
    ],
)
def test_covers(prefix: str, path: str, expected: bool) -> None:
    assert covers(prefix, path) is expected


@pytest.mark.parametrize(
    "pattern",
    [
        "arn:aws:iam::111111111111:role/app",
        "arn:aws:iam::111111111111:role/app-*",
        "arn:aws-cn:iam::111111111111:user/ops",
        "arn:aws:iam::111111111111:role/path/app",
    ],
)
def test_good_patterns(pattern: str) -> None:
    assert check_pattern(pattern) == pattern


@pytest.mark.parametrize(
    "pattern",
    [
        "arn:aws:iam::*:role/app",
        "arn:aws:iam::11111111111*:role/app",
        "arn:*:iam::1:role/a",
        "arn:aws:iam::111111111111:*/app",
        "arn:aws:sts::111111111111:assumed-role/a/b",
        "*",
        "",
    ],
)
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(InvalidInput):
        check_pattern(pattern)


TRUSTED = parse_cidrs(["10.0.0.0/24"])


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        ("203.0.113.9", "1.2.3.4", "203.0.113.9"),  # untrusted peer: header ignored
        ("10.0.0.5", "1.2.3.4", "1.2.3.4"),
        ("10.0.0.5", "9.9.9.9, 1.2.3.4", "1.2.3.4"),  # right-most untrusted hop
        ("10.0.0.5", "1.2.3.4, 10.0.0.7", "1.2.3.4"),  # skip our own proxies
        ("10.0.0.5", "10.0.0.6, 10.0.0.7", "10.0.0.6"),  # all trusted: the furthest
        ("10.0.0.5", "garbage, 1.2.3.4", "1.2.3.4"),
        ("10.0.0.5", "1.2.3.4, garbage", "10.0.0.5"),  # garbled: trust nothing beyond
        ("10.0.0.5", "", "10.0.0.5"),
        ("not-an-ip", "1.2.3.4", None),
        (None, None, None),
    ],
)
def test_client_ip(peer: str | None, xff: str | None, expected: str | None) -> None:
    got = client_ip(peer, xff, TRUSTED)
    assert (str(got) if got is not None else None) == expected


def test_bad_cidr_is_refused() -> None:
    with pytest.raises(InvalidInput):
        parse_cidrs(["10.0.0.0/33"])
