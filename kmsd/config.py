"""Configuration: one frozen dataclass, parsed once from the environment.

Nothing else in kmsd reads ``os.environ``; the dev launcher builds a mapping and passes it in.
botocore still reads the ambient AWS credentials itself, as it must.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from kmsd.domain.access import IpNetwork, check_pattern, parse_cidrs
from kmsd.errors import ConfigError, InvalidInput

DEFAULT_PORT = 8700
# Bearer tokens are short-lived: an agent signs in again long before this runs out.
DEFAULT_TOKEN_TTL_S = 3600
# SM's own floor is 7 days; a deleted secret stays recoverable for a week by default.
DEFAULT_RECOVERY_WINDOW_DAYS = 7
# Long polls: 90 s stays under common LB idle timeouts once raised from nginx's 60 s default;
# 180 s is the ceiling a client may ask for. Both must stay below the LB's read timeout.
DEFAULT_WATCH_HOLD_S = 90
MAX_WATCH_HOLD_S = 180
DEFAULT_ADOPTION_FLUSH_S = 1.0
# Held polls per session token and replica: an agent holds one per path it serves.
DEFAULT_WATCH_MAX_PER_TOKEN = 256
# Signed sign-in requests older (or newer) than this are refused, as Vault does.
DEFAULT_LOGIN_MAX_SKEW_S = 15 * 60
# AWS calls: a write must fail well inside a typical 60 s proxy timeout, so one call, with
# botocore's retries, is cut off after the call timeout (connect and read bound each attempt).
DEFAULT_AWS_CONNECT_TIMEOUT_S = 3.0
DEFAULT_AWS_READ_TIMEOUT_S = 10.0
DEFAULT_AWS_CALL_TIMEOUT_S = 20.0
MAX_AWS_CALL_TIMEOUT_S = 29.0
# Outbox: swept this often; an intent is resolved once it is older than any write in flight
# can be (the AWS call timeout, with margin).
DEFAULT_RECONCILE_INTERVAL_S = 60.0
DEFAULT_RECONCILE_MIN_AGE_S = 120.0
# The LISTEN connection is pinged this often and declared dead when a ping takes longer
# than the timeout: a frozen backend or a silent network drop is noticed within seconds.
DEFAULT_LISTEN_PING_S = 2.0
DEFAULT_LISTEN_PING_TIMEOUT_S = 3.0
# Hostile connections (docs/connections.md): a request's line and headers must be in within
# the header timeout (a new connection's clock starts at accept), its body within the body
# timeout of its headers plus a second per 64 KiB received (a minimum rate with a head start:
# no honest client is slower). Held polls are not affected: their body is read before the hold.
# At most this many connections per source address may be open without having delivered a
# complete request.
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_MAX_PENDING_PER_IP = 64


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything kmsd needs to run, validated at start-up."""

    database_url: str
    server_id: str
    sts_endpoint: str
    aws_region: str
    listen_host: str = "127.0.0.1"
    listen_port: int = DEFAULT_PORT
    aws_endpoint_url: str | None = None
    admins: tuple[str, ...] = ()
    token_ttl_s: int = DEFAULT_TOKEN_TTL_S
    login_max_skew_s: int = DEFAULT_LOGIN_MAX_SKEW_S
    sm_prefix: str = "kmsd/"
    sm_recovery_window_days: int = DEFAULT_RECOVERY_WINDOW_DAYS
    log_format: str = "json"
    db_pool_max: int = 10
    watch_default_hold_s: int = DEFAULT_WATCH_HOLD_S
    watch_max_hold_s: int = MAX_WATCH_HOLD_S
    adoption_flush_s: float = DEFAULT_ADOPTION_FLUSH_S
    watch_max_per_token: int = DEFAULT_WATCH_MAX_PER_TOKEN
    replica_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    trusted_proxies: tuple[IpNetwork, ...] = ()
    allowed_cidrs: tuple[IpNetwork, ...] = ()
    # Webhooks never go to loopback or link-local addresses (kmsd itself, instance metadata)
    # unless they are inside these CIDRs.
    webhook_allowed_cidrs: tuple[IpNetwork, ...] = ()
    # The KMS HMAC key (id, ARN or alias/...) webhook signing keys are derived with; without
    # one, webhooks cannot be set (kmsd stores no key it could sign with).
    webhook_mac_key: str | None = None
    bind_token_ip: bool = True
    security_profile: str | None = None  # path of a TOML profile; None: the shipped default
    rotation_lead_days: int = 14
    scheduler_tick_s: float = 5.0
    rotation_tick_s: float = 1.0  # how often the leader checks rotation gates
    aws_connect_timeout_s: float = DEFAULT_AWS_CONNECT_TIMEOUT_S
    aws_read_timeout_s: float = DEFAULT_AWS_READ_TIMEOUT_S
    aws_call_timeout_s: float = DEFAULT_AWS_CALL_TIMEOUT_S
    reconcile_interval_s: float = DEFAULT_RECONCILE_INTERVAL_S
    reconcile_min_age_s: float = DEFAULT_RECONCILE_MIN_AGE_S
    listen_ping_s: float = DEFAULT_LISTEN_PING_S
    listen_ping_timeout_s: float = DEFAULT_LISTEN_PING_TIMEOUT_S
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    max_connections: int | None = None  # None: derived from RLIMIT_NOFILE (kmsd.domain.conncap)
    max_pending_per_ip: int = DEFAULT_MAX_PENDING_PER_IP
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Parse settings from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        missing = [k for k in ("KMSD_DATABASE_URL", "KMSD_SERVER_ID") if not env.get(k)]
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if not region:
            missing.append("AWS_REGION (or AWS_DEFAULT_REGION)")
        if missing:
            raise ConfigError("missing required settings: " + ", ".join(missing))
        assert region is not None
        endpoint = env.get("AWS_ENDPOINT_URL") or None
        sts = (
            env.get("KMSD_STS_ENDPOINT")
            or env.get("AWS_ENDPOINT_URL_STS")
            or endpoint
            or f"https://sts.{region}.amazonaws.com"
        )
        listen = env.get("KMSD_LISTEN", f"127.0.0.1:{DEFAULT_PORT}")
        host, _, port = listen.rpartition(":")
        settings = cls(
            database_url=env["KMSD_DATABASE_URL"],
            server_id=env["KMSD_SERVER_ID"],
            sts_endpoint=_normalise_endpoint(sts, "KMSD_STS_ENDPOINT"),
            aws_region=region,
            listen_host=host or "0.0.0.0",  # noqa: S104 - ":8700" means all interfaces, on request
            listen_port=_int(port, "KMSD_LISTEN port", 0, 65535),
            aws_endpoint_url=endpoint,
            admins=tuple(a.strip() for a in env.get("KMSD_ADMINS", "").split(",") if a.strip()),
            token_ttl_s=_int(env.get("KMSD_TOKEN_TTL", str(DEFAULT_TOKEN_TTL_S)), "KMSD_TOKEN_TTL"),
            sm_prefix=env.get("KMSD_SM_PREFIX", "kmsd/"),
            sm_recovery_window_days=_int(
                env.get("KMSD_SM_RECOVERY_WINDOW_DAYS", str(DEFAULT_RECOVERY_WINDOW_DAYS)),
                "KMSD_SM_RECOVERY_WINDOW_DAYS",
            ),
            log_format=env.get("KMSD_LOG_FORMAT", "json"),
            db_pool_max=_int(env.get("KMSD_DB_POOL_MAX", "10"), "KMSD_DB_POOL_MAX"),
            watch_default_hold_s=_int(
                env.get("KMSD_WATCH_DEFAULT_HOLD", str(DEFAULT_WATCH_HOLD_S)),
                "KMSD_WATCH_DEFAULT_HOLD",
            ),
            watch_max_hold_s=_int(
                env.get("KMSD_WATCH_MAX_HOLD", str(MAX_WATCH_HOLD_S)), "KMSD_WATCH_MAX_HOLD"
            ),
            watch_max_per_token=_int(
                env.get("KMSD_WATCH_MAX_PER_TOKEN", str(DEFAULT_WATCH_MAX_PER_TOKEN)),
                "KMSD_WATCH_MAX_PER_TOKEN",
            ),
            replica_id=env.get("KMSD_REPLICA_ID") or f"{socket.gethostname()}:{os.getpid()}",
            trusted_proxies=_cidrs(env.get("KMSD_TRUSTED_PROXIES", ""), "KMSD_TRUSTED_PROXIES"),
            allowed_cidrs=_cidrs(env.get("KMSD_ALLOWED_CIDRS", ""), "KMSD_ALLOWED_CIDRS"),
            webhook_allowed_cidrs=_cidrs(
                env.get("KMSD_WEBHOOK_ALLOWED_CIDRS", ""), "KMSD_WEBHOOK_ALLOWED_CIDRS"
            ),
            webhook_mac_key=_kms_key(env.get("KMSD_WEBHOOK_MAC_KEY", ""), "KMSD_WEBHOOK_MAC_KEY"),
            bind_token_ip=_bool(env.get("KMSD_BIND_TOKEN_IP", "true"), "KMSD_BIND_TOKEN_IP"),
            security_profile=env.get("KMSD_SECURITY_PROFILE") or None,
            rotation_lead_days=_int(
                env.get("KMSD_ROTATION_LEAD_DAYS", "14"), "KMSD_ROTATION_LEAD_DAYS", 1, 365
            ),
            scheduler_tick_s=_seconds(env.get("KMSD_SCHEDULER_TICK", "5"), "KMSD_SCHEDULER_TICK"),
            rotation_tick_s=_seconds(env.get("KMSD_ROTATION_TICK", "1"), "KMSD_ROTATION_TICK"),
            aws_connect_timeout_s=_env_seconds(
                env, "KMSD_AWS_CONNECT_TIMEOUT", DEFAULT_AWS_CONNECT_TIMEOUT_S
            ),
            aws_read_timeout_s=_env_seconds(
                env, "KMSD_AWS_READ_TIMEOUT", DEFAULT_AWS_READ_TIMEOUT_S
            ),
            aws_call_timeout_s=_env_seconds(
                env, "KMSD_AWS_CALL_TIMEOUT", DEFAULT_AWS_CALL_TIMEOUT_S
            ),
            reconcile_interval_s=_env_seconds(
                env, "KMSD_RECONCILE_INTERVAL", DEFAULT_RECONCILE_INTERVAL_S
            ),
            reconcile_min_age_s=_env_seconds(
                env, "KMSD_RECONCILE_MIN_AGE", DEFAULT_RECONCILE_MIN_AGE_S
            ),
            listen_ping_s=_env_seconds(env, "KMSD_LISTEN_PING", DEFAULT_LISTEN_PING_S),
            listen_ping_timeout_s=_env_seconds(
                env, "KMSD_LISTEN_PING_TIMEOUT", DEFAULT_LISTEN_PING_TIMEOUT_S
            ),
            header_timeout_s=_env_seconds(env, "KMSD_HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT_S),
            body_timeout_s=_env_seconds(env, "KMSD_BODY_TIMEOUT", DEFAULT_BODY_TIMEOUT_S),
            max_connections=(
                _int(env["KMSD_MAX_CONNECTIONS"], "KMSD_MAX_CONNECTIONS")
                if env.get("KMSD_MAX_CONNECTIONS")
                else None
            ),
            max_pending_per_ip=_int(
                env.get("KMSD_MAX_PENDING_PER_IP", str(DEFAULT_MAX_PENDING_PER_IP)),
                "KMSD_MAX_PENDING_PER_IP",
            ),
        )
        for pattern in settings.admins:
            try:
                check_pattern(pattern)
            except InvalidInput as exc:
                raise ConfigError(f"KMSD_ADMINS: {pattern!r}: {exc.detail}") from None
        if settings.watch_default_hold_s > settings.watch_max_hold_s:
            raise ConfigError("KMSD_WATCH_DEFAULT_HOLD must not exceed KMSD_WATCH_MAX_HOLD")
        if not 7 <= settings.sm_recovery_window_days <= 30:
            raise ConfigError("KMSD_SM_RECOVERY_WINDOW_DAYS must be between 7 and 30 (SM's range)")
        if settings.log_format not in ("json", "console"):
            raise ConfigError("KMSD_LOG_FORMAT must be 'json' or 'console'")
        if settings.aws_call_timeout_s > MAX_AWS_CALL_TIMEOUT_S:
            raise ConfigError(
                f"KMSD_AWS_CALL_TIMEOUT must be at most {MAX_AWS_CALL_TIMEOUT_S:g} s: a write "
                "must fail inside a proxy's 60 s timeout, with time to record the outcome"
            )
        if settings.aws_connect_timeout_s > settings.aws_call_timeout_s:
            raise ConfigError("KMSD_AWS_CONNECT_TIMEOUT must not exceed KMSD_AWS_CALL_TIMEOUT")
        return settings


def _env_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    return _seconds(env.get(name, f"{default:g}"), name)


def _seconds(raw: str, name: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not 0.01 <= value <= 3600:
        raise ConfigError(f"{name} must be between 0.01 and 3600 seconds, got {value}")
    return value


def _int(raw: str, name: str, low: int = 1, high: int = 2**31 - 1) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _cidrs(raw: str, name: str) -> tuple[IpNetwork, ...]:
    try:
        return parse_cidrs(c.strip() for c in raw.split(",") if c.strip())
    except InvalidInput as exc:
        raise ConfigError(f"{name}: {exc.detail}") from None


def _kms_key(raw: str, name: str) -> str | None:
    key = raw.strip()
    if not key:
        return None
    if len(key) > 2048 or not key.isprintable() or " " in key:
        raise ConfigError(f"{name} must be a KMS key id, key ARN or alias/NAME, got {raw[:80]!r}")
    return key


def _bool(raw: str, name: str) -> bool:
    if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    return raw.lower() in ("true", "1", "yes")


def _normalise_endpoint(url: str, name: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http(s) URL, got {url!r}")
    return f"{parts.scheme}://{parts.netloc}"
