# PYTHON_ARGCOMPLETE_OK (argcomplete's global completion looks for this mark)
"""``kmsctl``: the operator's client, signing in with the ambient AWS identity.

Reads ``KMSD_ADDR`` and ``KMSD_SERVER_ID``; AWS credentials, region and the STS endpoint come
from the usual AWS sources (environment, profile, instance role).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from kmsd.cli import parsing
from kmsd.cli.admin_verbs import (
    add_access_verbs,
    add_audit_verbs,
    add_iam_policy_verb,
    add_outbox_verbs,
    add_whoami_verb,
)
from kmsd.cli.client import Client, CliError, forget_cached_token, save_cached_token
from kmsd.cli.output import KmsctlParser, emit
from kmsd.cli.rotate_verbs import add_rotate_verbs
from kmsd.cli.secret_verbs import add_datakey_verbs, add_secret_verbs
from kmsd.cli.tree_verbs import (
    add_effective_verb,
    add_node_verbs,
    add_sharing_verbs,
)
from kmsd.cli.watch_verbs import add_watch_verbs

SHELLS = ("bash", "zsh")


def cmd_login(c: Client, args: argparse.Namespace) -> None:
    """Sign in and cache the token: later commands act as this principal until it expires."""
    doc = c.login()
    save_cached_token(c.addr, doc["token"], doc["expires_at"])
    doc.pop("token", None)  # never print a bearer token by default
    emit(args, doc, lambda d: print(f"signed in as {d['principal']} until {d['expires_at']}"))


def cmd_logout(c: Client, args: argparse.Namespace) -> None:
    forget_cached_token(c.addr)
    emit(
        args,
        {"addr": c.addr, "forgotten": True},
        lambda d: print(f"forgot the cached token for {d['addr']}"),
    )


def cmd_completion(args: argparse.Namespace) -> None:
    """Print the shell code that makes the shell ask kmsctl for completions."""
    from argcomplete.shell_integration import shellcode

    print(shellcode(["kmsctl"], shell=args.shell), end="")


def build_parser() -> argparse.ArgumentParser:
    parser = KmsctlParser(prog="kmsctl", description=__doc__, output_default="text")
    parsing.add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("login", help="sign in with your AWS identity and cache the token").set_defaults(
        func=cmd_login
    )
    sub.add_parser("logout", help="forget the cached token").set_defaults(func=cmd_logout)
    add_node_verbs(sub)
    add_secret_verbs(sub)
    add_audit_verbs(sub)
    add_outbox_verbs(sub)
    add_datakey_verbs(sub)
    add_sharing_verbs(sub)
    add_access_verbs(sub)
    add_rotate_verbs(sub)
    add_iam_policy_verb(sub)
    add_whoami_verb(sub)
    add_effective_verb(sub)
    add_watch_verbs(sub)
    p = sub.add_parser(
        "completion",
        help='print shell completion code: eval "$(kmsctl completion bash)"',
        description="Print the code that gives your shell tab completion for kmsctl. "
        'bash: eval "$(kmsctl completion bash)" in ~/.bashrc; '
        'zsh: eval "$(kmsctl completion zsh)" in ~/.zshrc.',
    )
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(local=cmd_completion)
    return parser


# Exit statuses: 1 for every reported failure; as a shell reports death by a signal otherwise.
EXIT_FAILED = 1
EXIT_SIGPIPE = 128 + 13  # stdout went away (`kmsctl audit list | head -1`): quiet
EXIT_INTERRUPTED = 128 + 2  # Ctrl-C


def _say(message: str) -> None:
    """One line on stderr, even if stderr itself is gone."""
    with contextlib.suppress(OSError):
        print(f"kmsctl: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run one verb; every failure is one ``kmsctl: ...`` line on stderr, never a traceback."""
    try:
        parser = build_parser()
        parsing.autocomplete(parser)
        args = parser.parse_args(argv)
        if hasattr(args, "local"):  # a verb that needs no kmsd (completion)
            args.local(args)
        else:
            args.func(Client.from_env(), args)
        # Flush here, not at interpreter exit, so that a closed pipe is caught below.
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head -1`): as the Python docs advise, point stdout at
        # /dev/null so the flush at exit cannot fail again, and say nothing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_SIGPIPE
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except CliError as exc:
        _say(str(exc))
        return EXIT_FAILED
    except OSError as exc:  # a file or terminal error no verb turned into a sentence
        where = f" ({exc.filename})" if exc.filename else ""
        _say(f"{exc.strerror or exc}{where}")
        return EXIT_FAILED
    except Exception as exc:
        # A bug, or an answer of a shape this kmsctl does not know (an older or newer kmsd).
        _say(
            f"unexpected {type(exc).__name__}: {exc} (kmsctl {parsing.version()}, kmsd at "
            f"{os.environ.get('KMSD_ADDR', '?')}); please report it"
        )
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
