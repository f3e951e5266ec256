"""``meridian deployments webhook create NAME [--name N]`` (network): a token that lets another
system trigger one deployment with ``POST /hooks/<id>`` on the control plane's web listener;
``webhook list NAME`` shows them (never a token) and ``webhook revoke NAME WEBHOOK_ID`` makes
one's token refused (401)."""

from __future__ import annotations

import argparse
from typing import Any

from meridian.cli.common import add_client_options, connect
from meridian.cli.render import format_datetime, table, to_json


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
    listing = verbs.add_parser(
        "list", help="the webhooks of deployment NAME (no tokens)", parents=parents
    )
    listing.add_argument("name", metavar="NAME", help="the deployment")
    listing.add_argument("--json", action="store_true")
    add_client_options(listing)
    listing.set_defaults(func=cmd_list)
    revoke = verbs.add_parser(
        "revoke",
        help="revoke a webhook: its token is refused from now on",
        parents=parents,
        description="Revoke webhook WEBHOOK_ID of deployment NAME (audited). Calls with its "
        "token are answered 401 from then on. Needs an operator token.",
    )
    revoke.add_argument("name", metavar="NAME", help="the deployment")
    revoke.add_argument("webhook_id", metavar="WEBHOOK_ID")
    add_client_options(revoke)
    revoke.set_defaults(func=cmd_revoke)


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


def cmd_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        found = client.list_webhooks(args.name)
    if args.json:
        print(to_json([{"webhook_id": w.webhook_id, "name": w.name, "created_by": w.created_by,
                        "created_at": w.created_at, "revoked_at": w.revoked_at}
                       for w in found]))  # fmt: skip
        return 0
    rows = [
        [w.webhook_id, w.name, format_datetime(w.created_at), w.created_by or "-",
         f"revoked {format_datetime(w.revoked_at)}" if w.revoked_at else "live"]
        for w in found
    ]  # fmt: skip
    print(table(("WEBHOOK", "NAME", "CREATED", "BY", "STATE"), rows))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with connect(args) as client:
        hook = client.revoke_webhook(args.name, args.webhook_id)
    print(f"Revoked webhook {hook.webhook_id} ({hook.name}) of deployment {args.name}: "
          "its token is refused from now on")  # fmt: skip
    return 0
