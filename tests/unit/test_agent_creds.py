"""kmsagent's credentials file mode: re-read on change, last good keys kept, loose modes warned."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from kmsagent.creds import CredentialsConfig, CredentialsError, FileCredentials, credentials_session


def write(path: Path, key: str, secret: str, mode: int = 0o600, token: str | None = None) -> None:
    tmp = path.with_suffix(".tmp")
    text = f"[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"
    if token:
        text += f"aws_session_token = {token}\n"
    text += "[other]\naws_access_key_id = OTHER\naws_secret_access_key = other-secret\n"
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


async def test_a_rewritten_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    write(path, "AKIAFIRST", "first-secret")
    creds = FileCredentials(str(path), "default")
    frozen = await creds.get_frozen_credentials()
    assert (frozen.access_key, frozen.secret_key, frozen.token) == (
        "AKIAFIRST",
        "first-secret",
        None,
    )
    assert (await creds.get_frozen_credentials()).access_key == "AKIAFIRST"
    assert creds.reloads == 1  # unchanged file: not parsed again
    write(path, "AKIASECOND", "second-secret", token="session-token")
    frozen = await creds.get_frozen_credentials()
    assert (frozen.access_key, frozen.token) == ("AKIASECOND", "session-token")
    assert creds.reloads == 2


async def test_a_half_written_file_keeps_the_last_good_keys(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    write(path, "AKIAFIRST", "first-secret")
    creds = FileCredentials(str(path), "default")
    path.write_text("[default]\naws_access_key_id = AKIAHALF\n")
    with capture_logs() as logs:
        frozen = await creds.get_frozen_credentials()
    assert frozen.access_key == "AKIAFIRST"
    assert [e["event"] for e in logs] == ["credentials_file_unreadable"]
    assert "first-secret" not in str(logs)


def test_a_missing_or_broken_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="cannot read"):
        FileCredentials(str(tmp_path / "absent"), "default")
    path = tmp_path / "credentials"
    path.write_text("[default]\naws_secret_access_key = leaked-if-echoed\n")
    path.chmod(0o600)
    with pytest.raises(CredentialsError) as err:
        FileCredentials(str(path), "default")
    assert "leaked-if-echoed" not in str(err.value)


def test_a_profile_is_chosen_by_name(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    write(path, "AKIAFIRST", "first-secret")
    assert FileCredentials(str(path), "other").access_key == "OTHER"
    with pytest.raises(CredentialsError, match=r"\[nope\]"):
        FileCredentials(str(path), "nope")


@pytest.mark.parametrize(
    ("mode", "warned"), [(0o600, False), (0o400, False), (0o640, True), (0o644, True)]
)
def test_a_file_others_can_read_is_warned_about(tmp_path: Path, mode: int, warned: bool) -> None:
    path = tmp_path / "credentials"
    write(path, "AKIAFIRST", "first-secret", mode=mode)
    with capture_logs() as logs:
        FileCredentials(str(path), "default")
    assert any(e["event"] == "credentials_file_too_open" for e in logs) is warned
    assert oct(os.stat(path).st_mode & 0o777) == oct(mode)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (CredentialsConfig(mode="web-identity", role_arn="arn:aws:iam::1:role/r"), "token file"),
        (CredentialsConfig(mode="web-identity", token_file="/var/run/token"), "role ARN"),
        (CredentialsConfig(mode="telepathy"), "unknown credentials mode"),
    ],
)
def test_incomplete_modes_are_refused_up_front(config: CredentialsConfig, message: str) -> None:
    with pytest.raises(CredentialsError, match=message):
        credentials_session(config)
