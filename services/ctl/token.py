"""`taskctl token create|list|revoke`: the API's tokens, managed from the host.

    taskctl token create --name alice --role operator   prints the secret, once
    taskctl token list                                   the live tokens (never a secret)
    taskctl token revoke alice                           refused from its next request on

The same operations as the API's admin endpoints (shared.tokens); the audit trail names
`taskctl:<user>@<host>` as who made or revoked a token.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from services.ctl.commands import emit
from services.ctl.context import CtlContext
from services.ctl.errors import CtlError, bad_input, failed
from shared.tokens import InvalidTokenRequest, Role, TokenError, TokenExists, Tokens


def add_parser(sub: Any) -> None:
    p = sub.add_parser("token", help="API tokens: create (prints the secret once), list, revoke")
    actions = p.add_subparsers(dest="action", required=True, parser_class=type(p))
    create = actions.add_parser("create", help="a new token; its secret is printed once")
    create.add_argument("--name", required=True, help="who the audit trail will name")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--json", action="store_true")
    listing = actions.add_parser("list", help="the live tokens")
    listing.add_argument("--json", action="store_true")
    revoke = actions.add_parser("revoke", help="refuse a token from its next request on")
    revoke.add_argument("name")
    revoke.add_argument("--json", action="store_true")


def _refusal(exc: TokenError) -> CtlError:
    if isinstance(exc, InvalidTokenRequest):
        return bad_input(str(exc))
    if isinstance(exc, TokenExists):
        return failed(str(exc))
    return bad_input(str(exc))


async def run(ctx: CtlContext, console: Console, args: argparse.Namespace) -> int:
    tokens = Tokens(ctx.db, ctx.redis, ctx.keys)
    try:
        match args.action:
            case "create":
                new = await tokens.create(args.name, args.role, by=ctx.actor)
                data = {"name": new.name, "role": new.role.value, "secret": new.secret}
                if not args.json and sys.stderr.isatty():
                    print("Keep this secret now: it is not stored and cannot be shown again.",
                          file=sys.stderr)
                emit(console, args.json, data, new.secret)
            case "list":
                rows = await tokens.list()
                if args.json:
                    emit(console, True, {"items": [_row(r) for r in rows]}, "")
                else:
                    console.print(_table(rows))
            case "revoke":
                row = await tokens.revoke(args.name, by=ctx.actor)
                emit(console, args.json, _row(row), f"{row['name']}: revoked")
    except TokenError as exc:
        raise _refusal(exc) from None
    return 0


def _row(row: Any) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in dict(row).items()}


def _table(rows: list[Any]) -> Table:
    table = Table("name", "role", "created", "by")
    for r in rows:
        table.add_row(r["name"], r["role"], r["created_at"].strftime("%Y-%m-%d %H:%M"),
                      r["created_by"])
    return table
