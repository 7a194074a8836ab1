"""kmsctl's (and kmsd's, kmsagent's) command line: -o anywhere, --version, typos, completion."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kmsagent.cli import parser as kmsagent_parser
from kmsd.cli import kmsctl
from kmsd.cli.kmsd import build_parser as kmsd_parser
from kmsd.cli.parsing import version

BIN = Path(sys.executable).parent


def _leaves(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield words, parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaves(child, (*words, name))


def test_every_kmsctl_verb_takes_output_without_overwriting_an_earlier_one() -> None:
    leaves = list(_leaves(kmsctl.build_parser()))
    assert len(leaves) > 30  # the walk found the verbs, or it proves nothing
    for words, leaf in leaves:
        output = [a for a in leaf._actions if "--output" in a.option_strings]
        assert output, f"kmsctl {' '.join(words)} has no --output"
        assert output[0].option_strings == ["-o", "--output"]
        assert output[0].choices == ("text", "json", "jsonl")
        assert output[0].default is argparse.SUPPRESS, words


@pytest.mark.parametrize(
    ("argv", "output"),
    [
        (["secret", "show", "p", "n"], "text"),
        (["-o", "json", "secret", "show", "p", "n"], "json"),
        (["--output", "jsonl", "secret", "show", "p", "n"], "jsonl"),
        (["secret", "show", "p", "n", "-o", "json"], "json"),
        (["secret", "-o", "jsonl", "show", "p", "n"], "jsonl"),
        (["secret", "show", "--output=json", "p", "n"], "json"),
        (["-o", "json", "secret", "show", "p", "n", "-o", "text"], "text"),  # the last one wins
        (["-o", "jsonl", "watch", "prod/pay"], "jsonl"),
        (["rotate", "status", "7", "--follow", "-o", "json"], "json"),
        (["-o", "json", "node", "create", "prod"], "json"),  # write verbs too
        (["iam-policy", "server", "-o", "jsonl"], "jsonl"),
        (["-o", "json", "adoption", "forget", "prod/pay", "i-1"], "json"),
        (["logout", "-o", "json"], "json"),
    ],
)
def test_output_before_or_after_the_verb(argv: list[str], output: str) -> None:
    assert kmsctl.build_parser().parse_args(argv).output == output


@pytest.mark.parametrize(
    ("argv", "attr", "value"),
    [
        (["secret", "generate", "p", "n", "--use", "signing", "--lifetime", "90d"], "lifetime", 90),
        (["secret", "generate", "p", "n", "--use", "signing", "--lifetime", "90"], "lifetime", 90),
        (["secret", "generate", "p", "n", "--use", "SIGNING"], "use", "signing"),
        (["secret", "generate", "p", "n", "--use", "signing", "--algorithm", "RSA"], "algorithm",
         "RSA-PSS"),
        (["secret", "expiring", "--within", "2w"], "days", 14),
        (["secret", "expiring", "--days", "30"], "days", 30),
        (["datakey", "create", "p", "n", "--cmk", "k", "--period", "26w"], "period", 182),
        (["watch", "p", "--timeout", "2m"], "timeout", 120),
        (["watch", "p", "--timeout", "60"], "timeout", 60),
        (["rotate", "start", "p", "n", "--generate", "--gate-timeout", "1h30m"], "gate_timeout",
         "5400s"),
        (["audit", "list", "--since", "2025-01-02T00:00:00Z"], "since",
         "2025-01-02T00:00:00+00:00"),
    ],
)  # fmt: skip
def test_durations_and_names_as_people_type_them(argv: list[str], attr: str, value: object) -> None:
    assert getattr(kmsctl.build_parser().parse_args(argv), attr) == value


def test_kmsd_wait_db_takes_a_duration() -> None:
    assert kmsd_parser().parse_args(["serve", "--wait-db", "2m"]).wait_db == 120.0
    assert kmsd_parser().parse_args(["migrate", "--wait-db", "0"]).wait_db == 0.0


@pytest.mark.parametrize(
    ("prog", "build"),
    [("kmsctl", kmsctl.build_parser), ("kmsd", kmsd_parser), ("kmsagent", kmsagent_parser)],
)
def test_version(
    prog: str, build: Callable[[], argparse.ArgumentParser], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build().parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"{prog} {version()}\n"
    assert version()[0].isdigit()  # from the installed distribution's metadata


# argv, the usage line it must show, and the suggestion.
TYPOS = [
    (["secret", "shwo"], "usage: kmsctl secret ", "did you mean show?"),
    (["secret", "show", "--outptu", "json", "p", "n"], "usage: kmsctl secret show ",
     "did you mean --output?"),
    (["secret", "show", "p", "n", "--outptu=json"], "usage: kmsctl secret show ",
     "did you mean --output?"),
    (["nod", "list"], "usage: kmsctl ", "did you mean node?"),
    (["rotate", "stauts"], "usage: kmsctl rotate ", "did you mean status?"),
    (["rotate", "status", "7", "--folow"], "usage: kmsctl rotate status ",
     "did you mean --follow?"),
    (["secret", "generate", "p", "n", "--use", "signin"], "usage: kmsctl secret generate ",
     "did you mean signing?"),
    (["secret", "generate", "p", "n", "--use", "signing", "--algorithm", "ed2559"],
     "usage: kmsctl secret generate ", "did you mean Ed25519?"),
    (["-o", "jsn", "whoami"], "usage: kmsctl ", "did you mean json?"),
    (["whoami", "-o", "jsonn"], "usage: kmsctl whoami ", "did you mean json?"),
    (["access", "grant", "arn:x", "prod", "reed"], "usage: kmsctl access grant ",
     "did you mean read?"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "usage", "hint"), TYPOS)
def test_a_typo_shows_that_verbs_usage_and_the_closest_word(
    argv: list[str], usage: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        kmsctl.main(argv)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(usage)
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    assert errors[0].endswith(hint), errors[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "usage", "hint"),
    [
        (["serv"], "usage: kmsd ", "did you mean serve?"),
        (["serve", "--wait-bd", "5"], "usage: kmsd serve ", "did you mean --wait-db?"),
        (["dev", "--data-dri", "x"], "usage: kmsd dev ", "did you mean --data-dir?"),
    ],
)
def test_kmsd_typos_too(
    argv: list[str], usage: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        kmsd_parser().parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage)
    assert err.rstrip().endswith(hint)


def test_no_suggestion_lists_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        kmsctl.main(["completion", "fish"])
    assert "invalid choice: 'fish' (choose from bash, zsh)" in capsys.readouterr().err


@pytest.mark.parametrize(("shell", "marker"), [("bash", "complete "), ("zsh", "#compdef kmsctl")])
def test_completion_prints_the_activation_script_without_a_server(
    shell: str, marker: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KMSD_ADDR", raising=False)
    monkeypatch.delenv("KMSD_SERVER_ID", raising=False)
    assert kmsctl.main(["completion", shell]) == 0
    out = capsys.readouterr().out
    assert marker in out
    assert "kmsctl" in out


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("kmsctl secret sh", {"show"}),
        ("kmsctl secret show --ou", {"--output"}),
        ("kmsctl -o js", {"json", "jsonl"}),
        ("kmsctl rot", {"rotate"}),
        ("kmsd s", {"serve"}),
    ],
)
def test_the_shell_gets_completions_from_main(
    line: str, expected: set[str], tmp_path: Path
) -> None:
    answer = tmp_path / "completions"
    env = {
        **os.environ,
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_IFS": "\n",
        "_ARGCOMPLETE_STDOUT_FILENAME": str(answer),
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
    }
    prog = line.split(maxsplit=1)[0]
    done = subprocess.run(
        [str(BIN / prog)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert {w.strip() for w in answer.read_text().split("\n")} == expected
    assert done.stdout == ""
