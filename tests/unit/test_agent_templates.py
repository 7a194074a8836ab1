"""Rendered files: the option and config forms, the sandbox, atomic writes, render-on-change."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import jinja2
import pytest

from kmsagent.state import PathView, Secret, Version
from kmsagent.templates import (
    Renderer,
    TemplateError,
    TemplateSpec,
    context,
    load_config,
    render_text,
)

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:kmsd/p/a/db-AbCdEf"


def _secret(name: str, kind: str, value: str | bytes, version: str = "x1") -> Secret:
    return Secret(name, kind, "prod/pay", None, ARN, None, (Version(version, "current", value),))


def _view(secret_text: str = "p1", version: str = "v1") -> PathView:  # noqa: S107
    db = f'{{"password": "{secret_text}", "user": "u"}}'
    secrets = {
        "db": _secret("db", "json", db, version),
        "tls": _secret("tls", "binary", b"\x00k"),
        "token": _secret("token", "text", "abc"),
        "files": _secret("files", "datakey", b"key"),
    }
    return PathView(path="prod/pay", path_version=1, hash="h", secrets=secrets)


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def _exists(path: Path) -> bool:
    return path.exists()


def test_the_option_form() -> None:
    assert TemplateSpec.parse("a.tpl:/etc/x.conf") == TemplateSpec(
        Path("a.tpl"), Path("/etc/x.conf")
    )
    spec = TemplateSpec.parse("a.tpl:/etc/x.conf:0640:systemctl reload nginx")
    assert (spec.mode, spec.command) == (0o640, ("systemctl", "reload", "nginx"))
    assert TemplateSpec.parse("a:b::sh -c 'x:y'").command == ("sh", "-c", "x:y")
    for bad in ("a.tpl", ":b", "a:b:999", "a:b:rw"):
        with pytest.raises(TemplateError):
            TemplateSpec.parse(bad)


def test_the_config_form(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[[template]]\nsource = "a.tpl"\ndestination = "/etc/a"\nmode = "0640"\n'
        'command = ["kill", "-HUP", "1"]\n\n[[template]]\nsource = "b"\ndestination = "c"\n'
    )
    first, second = load_config(cfg)
    assert (first.mode, first.command, second.mode) == (0o640, ("kill", "-HUP", "1"), 0o600)
    cfg.write_text('[[template]]\nsource = "a"\n')
    with pytest.raises(TemplateError, match="needs source and destination"):
        load_config(cfg)


def test_what_a_template_sees() -> None:
    ctx = context([_view()])
    assert ctx["secrets"]["db"] == {"password": "p1", "user": "u"}
    assert ctx["secrets"]["tls"] == "AGs="
    assert ctx["secrets"]["token"] == "abc"
    assert "files" not in ctx["secrets"]  # data keys stay in memory
    assert render_text("{{ secrets.db.user }}:{{ secrets['db'].password }}", ctx) == "u:p1"


@pytest.mark.parametrize(
    "source",
    [
        "{{ secrets.nope }}",  # an undefined name is an error, never an empty password
        "{{ secrets.db.nope }}",
        "{{ ''.__class__.__mro__ }}",  # no way out of the sandbox
        "{{ secrets.db.update({'password': 'x'}) }}",  # nothing it is given can be changed
        "{% for x in %}",
    ],
)
def test_the_sandbox_refuses(source: str) -> None:
    with pytest.raises(jinja2.TemplateError):
        render_text(source, context([_view()]))


async def test_files_are_written_only_when_their_text_changes(tmp_path: Path) -> None:
    src, dest, ran = tmp_path / "db.tpl", tmp_path / "db.conf", tmp_path / "ran"
    src.write_text("password={{ secrets.db.password }}\n")
    command = f"{sys.executable} -c \"open('{ran}', 'a').write('x')\""
    renderer = Renderer([TemplateSpec.parse(f"{src}:{dest}:0640:{command}")])
    assert await renderer.render_all([_view("p1")])
    assert dest.read_text() == "password=p1\n"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    before = dest.stat().st_ino
    assert await renderer.render_all([_view("p1", version="v1")])  # same text: not rewritten
    assert (dest.stat().st_ino, ran.read_text(), renderer.writes) == (before, "x", 1)
    assert await renderer.render_all([_view("p2", version="v2")])
    assert (dest.read_text(), ran.read_text(), renderer.writes) == ("password=p2\n", "xx", 2)
    assert _leftovers(tmp_path) == []  # no temporary file left behind


async def test_a_broken_template_leaves_the_old_file_and_says_so(tmp_path: Path) -> None:
    src, dest = tmp_path / "db.tpl", tmp_path / "db.conf"
    src.write_text("password={{ secrets.db.password }}\n")
    renderer = Renderer([TemplateSpec.parse(f"{src}:{dest}")])
    assert await renderer.render_all([_view("p1")])
    src.write_text("password={{ secrets.db.pasword }}\n")  # a typo
    assert not await renderer.render_all([_view("p2", version="v2")])
    assert dest.read_text() == "password=p1\n"
    ((what, problem),) = renderer.problems().items()
    assert what == f"template {dest}"
    assert "UndefinedError" in problem
    assert "p1" not in problem
    assert "p2" not in problem
    src.write_text("password={{ secrets.db.password }}\n")
    assert await renderer.render_all([_view("p2", version="v2")])
    assert renderer.problems() == {}


async def test_a_failing_command_is_reported_until_it_succeeds(tmp_path: Path) -> None:
    src, dest = tmp_path / "t.tpl", tmp_path / "t.conf"
    src.write_text("{{ secrets.token }}")
    renderer = Renderer([TemplateSpec.parse(f"{src}:{dest}:0600:false")])
    assert await renderer.render_all([_view()])  # the file is fine; its command is not
    assert renderer.problems() == {f"template {dest}": "command false exited 1"}
    assert _exists(dest)
