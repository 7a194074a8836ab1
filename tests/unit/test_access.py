"""Admin ARN patterns (kmsd.domain.access)."""

from __future__ import annotations

import pytest

from kmsd.domain.access import arn_matches, is_admin

OPS = "arn:aws:iam::123456789012:role/ops-*"

MATCHES = {
    "exact": ("arn:aws:iam::123456789012:role/x", "arn:aws:iam::123456789012:role/x", True),
    "exact differs": (
        "arn:aws:iam::123456789012:role/x",
        "arn:aws:iam::123456789012:role/y",
        False,
    ),
    "prefix is not a match": (
        "arn:aws:iam::123456789012:role/x",
        "arn:aws:iam::123456789012:role/xy",
        False,
    ),
    "suffix is not a match": (
        "role/x",
        "arn:aws:iam::123456789012:role/x",
        False,
    ),
    "ops-* matches ops-a": (OPS, "arn:aws:iam::123456789012:role/ops-a", True),
    "ops-* matches ops- itself": (OPS, "arn:aws:iam::123456789012:role/ops-", True),
    "ops-* matches a longer name": (OPS, "arn:aws:iam::123456789012:role/ops-deploy_1", True),
    "ops-* not dev": (OPS, "arn:aws:iam::123456789012:role/dev", False),
    "ops-* not another account": (OPS, "arn:aws:iam::999999999999:role/ops-a", False),
    "ops-* not stretched over ':'": (OPS, "arn:aws:iam::123456789012:role/ops-a:extra", False),
    "ops-* not a user": (OPS, "arn:aws:iam::123456789012:user/ops-a", False),
    "* account matches one account": (
        "arn:aws:iam::*:role/x",
        "arn:aws:iam::123456789012:role/x",
        True,
    ),
    "* account does not cross ':'": ("arn:aws:iam::*:role/x", "arn:aws:iam::1:2:role/x", False),
    "* account does not swallow region": (
        "arn:aws:iam:*:role/x",
        "arn:aws:iam::1:role/x",
        False,
    ),
    "* at the end does not cross ':'": (
        "arn:aws:iam::123456789012:*",
        "arn:aws:iam::123456789012:role/x:y",
        False,
    ),
    "* at the end matches within the part": (
        "arn:aws:iam::123456789012:*",
        "arn:aws:iam::123456789012:role/x",
        True,
    ),
    "lone * matches no ARN": ("*", "arn:aws:iam::123456789012:role/x", False),
    "lone * matches a colon-free string": ("*", "anything/at/all", True),
    "two stars, one per part": (
        "arn:aws:iam::*:role/*",
        "arn:aws:iam::123456789012:role/anything",
        True,
    ),
    "two stars still cannot cross ':'": (
        "arn:aws:iam::*:role/*",
        "arn:aws:iam::1:role/a:b",
        False,
    ),
    "partition is literal": ("arn:aws:iam::*:role/x", "arn:aws-cn:iam::1:role/x", False),
    "'.' is literal (matches '.')": ("arn:aws:iam::1:role/a.b", "arn:aws:iam::1:role/a.b", True),
    "'.' is literal (not any char)": ("arn:aws:iam::1:role/a.b", "arn:aws:iam::1:role/axb", False),
    "'+' is literal (matches '+')": ("arn:aws:iam::1:role/a+", "arn:aws:iam::1:role/a+", True),
    "'+' is literal (not repetition)": ("arn:aws:iam::1:role/a+", "arn:aws:iam::1:role/aaa", False),
    "'?' is literal": ("arn:aws:iam::1:role/ab?", "arn:aws:iam::1:role/a", False),
    "'[' is literal": ("arn:aws:iam::1:role/[ab]", "arn:aws:iam::1:role/a", False),
    "'|' is literal": ("arn:aws:iam::1:role/a|.*", "arn:aws:iam::1:role/zzz", False),
    "'$' and '^' are literal": ("^arn:aws:iam::1:role/a$", "arn:aws:iam::1:role/a", False),
}


@pytest.mark.parametrize(("pattern", "arn", "expected"), MATCHES.values(), ids=MATCHES.keys())
def test_arn_matches(pattern: str, arn: str, expected: bool) -> None:
    assert arn_matches(pattern, arn) is expected


ADMINS = (
    "arn:aws:iam::123456789012:role/ops-*",
    "arn:aws:iam::123456789012:user/alice",
    "arn:aws:iam::*:role/breakglass",
)


@pytest.mark.parametrize(
    ("arn", "admins", "expected"),
    [
        ("arn:aws:iam::123456789012:role/ops-a", ADMINS, True),
        ("arn:aws:iam::123456789012:user/alice", ADMINS, True),
        ("arn:aws:iam::555555555555:role/breakglass", ADMINS, True),
        ("arn:aws:iam::123456789012:user/bob", ADMINS, False),
        ("arn:aws:iam::555555555555:role/ops-a", ADMINS, False),
        ("arn:aws:iam::123456789012:user/alice", (), False),
        ("arn:aws:iam::123456789012:user/alice", [], False),
        ("arn:aws:iam::123456789012:user/alice", iter(ADMINS), True),
        ("arn:aws:iam::123456789012:user/alice", ["*"], False),
    ],
)
def test_is_admin(arn: str, admins: object, expected: bool) -> None:
    assert is_admin(arn, admins) is expected  # type: ignore[arg-type]
