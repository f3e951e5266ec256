"""``meridian seal-key new|fingerprint``: key files for end-to-end sealing of step data.

A key file belongs to one key group (e.g. ``eu-sites``); copy it to every flow runner that
submits sealed steps to that group (``MERIDIAN_SEAL_KEYS=eu-sites=file:PATH``) and to every
agent of the group's environments (``[sealing.keys]`` in the agent config). The fingerprint
lets holders compare keys without showing them. See docs/security.md.
"""

from __future__ import annotations

import argparse
from typing import Any

from meridian.cli.common import expand_path
from meridian.core.sealing import fingerprint, generate_key_file, read_key_file


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    seal_key = commands.add_parser(
        "seal-key", help="create and check key files for sealed steps", parents=parents
    )
    actions = seal_key.add_subparsers(dest="action", metavar="ACTION", required=True)
    new = actions.add_parser(
        "new", help="write a new random key file (mode 0600, never overwrites)", parents=parents
    )
    new.add_argument("path", metavar="PATH", help="where to write the key, e.g. eu-sites.key")
    new.set_defaults(func=cmd_new)
    show = actions.add_parser(
        "fingerprint", help="print a key file's fingerprint (not the key)", parents=parents
    )
    show.add_argument("path", metavar="PATH", help="a key file")
    show.set_defaults(func=cmd_fingerprint)


def cmd_new(args: argparse.Namespace) -> int:
    path = expand_path(args.path)
    fingerprint = generate_key_file(path)
    print(f"wrote a new sealing key to {path} (fingerprint {fingerprint})")
    print(
        "give it to the flow runners and agents of one key group, e.g.\n"
        f"  runner: MERIDIAN_SEAL_KEYS=GROUP=file:{path}\n"
        f'  agent config: [sealing.keys] GROUP = "file:{path}"'
    )
    return 0


def cmd_fingerprint(args: argparse.Namespace) -> int:
    path = expand_path(args.path)
    print(fingerprint(read_key_file(path)))
    return 0
