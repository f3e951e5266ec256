"""``meridian deployments webhook create NAME [--name N]`` (network): a token that lets another
system trigger one deployment with ``POST /hooks/<id>`` on the control plane's web listener."""

from __future__ import annotations

import argparse
from typing import Any

from meridian.cli.common import add_client_options, connect
from meridian.cli.render import to_json


def register_under(actions: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``webhook create`` to the ``deployments`` group's actions."""
    webhook = actions.add_parser(
        "webhook", help="tokens that trigger a deployment over HTTPS", parents=parents
    )
    verbs = webhook.add_subparsers(dest="webhook_action", metavar="ACTION", required=True)
    create = verbs.add_parser(
        "create",
        help="a new webhook token for deployment NAME (shown once)",
        parents=parents,
        description="Create a webhook token for deployment NAME. The token is printed once; "
        "the control plane keeps only its SHA-256. Needs an operator token.",
    )
    create.add_argument("name", metavar="NAME", help="the deployment it triggers")
    create.add_argument(
        "--name", dest="webhook_name", default="", metavar="N", help="a label (default: default)"
    )
    create.add_argument("--json", action="store_true")
    add_client_options(create)
    create.set_defaults(func=cmd_create)


def cmd_create(args: argparse.Namespace) -> int:
    with connect(args) as client:
        created = client.create_webhook(args.name, args.webhook_name)
    if args.json:
        print(to_json({"webhook_id": created.webhook_id, "token": created.token,
                       "url_path": created.url_path}))  # fmt: skip
        return 0
    print(f"Webhook {created.webhook_id} triggers deployment {args.name}.")
    print(f"Token (shown once, keep it secret): {created.token}")
    print(
        f"Call it on the web listener (--http-listen):\n"
        f"  curl -X POST https://HOST:PORT{created.url_path} \\\n"
        f"    -H 'Authorization: Bearer {created.token}' \\\n"
        f"    -H 'Idempotency-Key: <unique per delivery>' -d '{{\"param\": \"value\"}}'"
    )
    return 0
