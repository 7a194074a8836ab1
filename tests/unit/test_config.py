"""Settings parsing (kmsd.config)."""

from __future__ import annotations

import pytest

from kmsd.config import DEFAULT_PORT, Settings
from kmsd.errors import ConfigError

MINIMAL = {
    "KMSD_DATABASE_URL": "postgresql://kmsd@localhost/kmsd",
    "KMSD_SERVER_ID": "srv-1",
    "AWS_REGION": "eu-west-1",
}


def env(**overrides: str | None) -> dict[str, str]:
    out = dict(MINIMAL)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def test_minimal_env() -> None:
    s = Settings.from_env(env())
    assert s.database_url == MINIMAL["KMSD_DATABASE_URL"]
    assert s.server_id == "srv-1"
    assert s.aws_region == "eu-west-1"
    assert s.sts_endpoint == "https://sts.eu-west-1.amazonaws.com"
    assert s.aws_endpoint_url is None
    assert (s.listen_host, s.listen_port) == ("127.0.0.1", DEFAULT_PORT)
    assert s.admins == ()
    assert s.log_format == "json"
    assert s.sm_recovery_window_days == 7
    assert s.login_max_skew_s == 15 * 60


def test_from_env_does_not_read_the_process_env_when_given_a_mapping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KMSD_STS_ENDPOINT", "http://from-process:1")
    assert Settings.from_env(env()).sts_endpoint == "https://sts.eu-west-1.amazonaws.com"


def test_default_region_is_a_fallback() -> None:
    s = Settings.from_env(env(AWS_REGION=None, AWS_DEFAULT_REGION="us-west-2"))
    assert s.aws_region == "us-west-2"
    assert s.sts_endpoint == "https://sts.us-west-2.amazonaws.com"


def test_region_wins_over_default_region() -> None:
    assert Settings.from_env(env(AWS_DEFAULT_REGION="us-west-2")).aws_region == "eu-west-1"


STS_CASES = {
    "AWS_ENDPOINT_URL": ({"AWS_ENDPOINT_URL": "http://127.0.0.1:5000"}, "http://127.0.0.1:5000"),
    "AWS_ENDPOINT_URL path dropped": (
        {"AWS_ENDPOINT_URL": "http://127.0.0.1:5000/some/path/"},
        "http://127.0.0.1:5000",
    ),
    "AWS_ENDPOINT_URL_STS beats AWS_ENDPOINT_URL": (
        {"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_STS": "http://b:2"},
        "http://b:2",
    ),
    "KMSD_STS_ENDPOINT wins": (
        {
            "AWS_ENDPOINT_URL": "http://a:1",
            "AWS_ENDPOINT_URL_STS": "http://b:2",
            "KMSD_STS_ENDPOINT": "https://sts.example.com/",
        },
        "https://sts.example.com",
    ),
}


@pytest.mark.parametrize(("extra", "sts"), STS_CASES.values(), ids=STS_CASES.keys())
def test_sts_endpoint(extra: dict[str, str], sts: str) -> None:
    s = Settings.from_env(env(**extra))
    assert s.sts_endpoint == sts
    assert s.aws_endpoint_url == extra.get("AWS_ENDPOINT_URL")


@pytest.mark.parametrize(
    "bad", ["ftp://sts.example.com", "sts.example.com", "http://", "http:///x"]
)
def test_bad_sts_endpoint(bad: str) -> None:
    with pytest.raises(ConfigError, match="KMSD_STS_ENDPOINT"):
        Settings.from_env(env(KMSD_STS_ENDPOINT=bad))


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ("KMSD_DATABASE_URL", "KMSD_DATABASE_URL"),
        ("KMSD_SERVER_ID", "KMSD_SERVER_ID"),
        ("AWS_REGION", "AWS_REGION"),
    ],
)
@pytest.mark.parametrize("how", ["absent", "empty"])
def test_missing_required_setting(missing: str, named: str, how: str) -> None:
    with pytest.raises(ConfigError, match=named) as info:
        Settings.from_env(env(**{missing: None if how == "absent" else ""}))
    others = {"KMSD_DATABASE_URL", "KMSD_SERVER_ID", "AWS_REGION"} - {named}
    for other in others:
        assert other not in str(info.value)


def test_all_missing_are_named_together() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({})
    for name in ("KMSD_DATABASE_URL", "KMSD_SERVER_ID", "AWS_REGION"):
        assert name in str(info.value)


ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - what a bare ":port" means


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("0.0.0.0:9000", ALL_INTERFACES, 9000),
        ("localhost:1", "localhost", 1),
        (":8701", ALL_INTERFACES, 8701),
        ("8702", ALL_INTERFACES, 8702),
    ],
)
def test_listen(listen: str, host: str, port: int) -> None:
    s = Settings.from_env(env(KMSD_LISTEN=listen))
    assert (s.listen_host, s.listen_port) == (host, port)


@pytest.mark.parametrize("listen", ["127.0.0.1:http", "127.0.0.1:", "localhost", "1.2.3.4:80x"])
def test_bad_listen_port(listen: str) -> None:
    with pytest.raises(ConfigError, match="KMSD_LISTEN"):
        Settings.from_env(env(KMSD_LISTEN=listen))


@pytest.mark.parametrize("listen", ["127.0.0.1:70000", "127.0.0.1:-1"])
def test_out_of_range_listen_port(listen: str) -> None:
    with pytest.raises(ConfigError, match="KMSD_LISTEN"):
        Settings.from_env(env(KMSD_LISTEN=listen))


@pytest.mark.parametrize("days", ["7", "30", "14"])
def test_recovery_window_in_range(days: str) -> None:
    s = Settings.from_env(env(KMSD_SM_RECOVERY_WINDOW_DAYS=days))
    assert s.sm_recovery_window_days == int(days)


@pytest.mark.parametrize("days", ["3", "6", "31", "0", "-7", "seven"])
def test_bad_recovery_window(days: str) -> None:
    with pytest.raises(ConfigError, match="KMSD_SM_RECOVERY_WINDOW_DAYS"):
        Settings.from_env(env(KMSD_SM_RECOVERY_WINDOW_DAYS=days))


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_log_format(fmt: str) -> None:
    assert Settings.from_env(env(KMSD_LOG_FORMAT=fmt)).log_format == fmt


@pytest.mark.parametrize("fmt", ["text", "JSON", ""])
def test_bad_log_format(fmt: str) -> None:
    with pytest.raises(ConfigError, match="KMSD_LOG_FORMAT"):
        Settings.from_env(env(KMSD_LOG_FORMAT=fmt))


@pytest.mark.parametrize(
    ("var", "raw"),
    [("KMSD_TOKEN_TTL", "1h"), ("KMSD_DB_POOL_MAX", "ten")],
)
def test_bad_integers_are_named(var: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=var):
        Settings.from_env(env(**{var: raw}))


@pytest.mark.parametrize(
    ("raw", "admins"),
    [
        ("", ()),
        (" , ,", ()),
        ("arn:aws:iam::111111111111:role/a", ("arn:aws:iam::111111111111:role/a",)),
        (
            " arn:aws:iam::111111111111:role/a , arn:aws:iam::111111111111:user/b,,"
            "arn:aws:iam::111111111111:role/ops-* ",
            (
                "arn:aws:iam::111111111111:role/a",
                "arn:aws:iam::111111111111:user/b",
                "arn:aws:iam::111111111111:role/ops-*",
            ),
        ),
    ],
)
def test_admins_split_and_trimmed(raw: str, admins: tuple[str, ...]) -> None:
    assert Settings.from_env(env(KMSD_ADMINS=raw)).admins == admins


@pytest.mark.parametrize(
    "raw", ["arn:aws:iam::*:role/admin", "arn:aws:iam::1:role/a", "*", "arn:aws:sts::1:x"]
)
def test_admin_patterns_are_checked_like_bindings(raw: str) -> None:
    # A wildcard account would make that role an admin from any AWS account.
    with pytest.raises(ConfigError, match="KMSD_ADMINS"):
        Settings.from_env(env(KMSD_ADMINS=raw))


def test_settings_are_frozen() -> None:
    s = Settings.from_env(env())
    with pytest.raises(AttributeError):
        s.server_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "raw"),
    [("KMSD_TOKEN_TTL", "0"), ("KMSD_TOKEN_TTL", "-5"), ("KMSD_DB_POOL_MAX", "0")],
)
def test_non_positive_numbers_are_refused(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env(**{name: raw}))


# Hostile connections: header and body timeouts, the connection cap, unproven per address.


def test_connection_limits_default() -> None:
    s = Settings.from_env(env())
    assert (s.header_timeout_s, s.body_timeout_s) == (10.0, 30.0)
    assert s.max_connections is None  # derived from RLIMIT_NOFILE at start-up
    assert s.max_pending_per_ip == 64


@pytest.mark.parametrize(
    ("name", "raw", "field", "value"),
    [
        ("KMSD_HEADER_TIMEOUT", "2.5", "header_timeout_s", 2.5),
        ("KMSD_BODY_TIMEOUT", "120", "body_timeout_s", 120.0),
        ("KMSD_MAX_CONNECTIONS", "5000", "max_connections", 5000),
        ("KMSD_MAX_CONNECTIONS", "", "max_connections", None),
        ("KMSD_MAX_PENDING_PER_IP", "8", "max_pending_per_ip", 8),
    ],
)
def test_connection_limits_are_read(name: str, raw: str, field: str, value: object) -> None:
    assert getattr(Settings.from_env(env(**{name: raw})), field) == value


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("KMSD_HEADER_TIMEOUT", "0"),
        ("KMSD_HEADER_TIMEOUT", "ten"),
        ("KMSD_HEADER_TIMEOUT", "7200"),
        ("KMSD_BODY_TIMEOUT", "-1"),
        ("KMSD_BODY_TIMEOUT", "nan"),
        ("KMSD_MAX_CONNECTIONS", "0"),
        ("KMSD_MAX_CONNECTIONS", "many"),
        ("KMSD_MAX_PENDING_PER_IP", "0"),
        ("KMSD_MAX_PENDING_PER_IP", "1.5"),
    ],
)
def test_bad_connection_limits_are_named(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env(**{name: raw}))
