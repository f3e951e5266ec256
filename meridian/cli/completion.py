"""``meridian completion bash|zsh|fish``: print the shell completion script (argcomplete).

Completion runs the real parser: the shell calls ``meridian`` with ``_ARGCOMPLETE`` set, and
``main`` hands the parser to argcomplete before parsing (``complete``), so every command,
alias, flag and choice completes exactly as it parses. argcomplete is imported only then.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

SHELLS = ("bash", "zsh", "fish")


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    completion = commands.add_parser(
        "completion",
        help="print the shell completion script [local]",
        parents=parents,
        description="Print the completion script for SHELL. Enable it with, e.g.: "
        'eval "$(meridian completion bash)" in ~/.bashrc, '
        'eval "$(meridian completion zsh)" in ~/.zshrc, or '
        "meridian completion fish > ~/.config/fish/completions/meridian.fish",
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    completion.set_defaults(func=cmd_completion)


def script(shell: str) -> str:
    import argcomplete

    return str(argcomplete.shellcode(["meridian"], shell=shell))


def cmd_completion(args: argparse.Namespace) -> int:
    print(script(args.shell), end="")
    return 0


def complete(parser: argparse.ArgumentParser) -> None:
    """When the shell asks for completions, answer and exit; otherwise do nothing."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    import argcomplete

    argcomplete.autocomplete(parser)
