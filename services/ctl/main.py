"""`taskctl`: the operator's command line for Taskreaper.

    taskctl status [--json]                 workers, processes, queues, counts, reaper
    taskctl force-kill [--force|--status]   cancel everything, kill this host's workers, purge
    taskctl monitor [--once]                live progress of running tasks
    taskctl monitor kill <id>               end one running task now
    taskctl tree <id> [--depth N]           a task's ancestors and the job tree below it
    taskctl cancel <id> [--force]           cancel one task
    taskctl cancel-all [--force]            cancel everything (or one actor's, one queue's)
    taskctl resume <id>                     start a new attempt from the checkpoint
    taskctl pause <id>                      the task saves its work and waits for a resume
    taskctl pause-all / resume-all          a maintenance window (or one actor's, one queue's)
    taskctl submit <actor> key=value ...    enqueue a task (values are JSON when they parse)
    taskctl drain NODE [--no-wait]          a worker hands its tasks to the others and stops
    taskctl token create|list|revoke        API tokens (create prints the secret once)

Settings come from the same environment variables as the services (DATABASE_URL,
REDIS_URL, KEY_PREFIX, ...). Exit codes: 0 done, 1 refused, aborted or failed,
2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

import asyncpg
import redis
import structlog
from rich.console import Console

from services.ctl import commands, drain, force_kill, monitor, pauses, status, token, tree
from services.ctl.context import open_context
from services.ctl.errors import FAILED, USAGE, CtlError, bad_input, failed
from shared import runfile
from shared.errors import CancelConflict, SubmitError, TaskNotFound, TaskreaperError
from shared.logs import configure_logging
from shared.settings import Settings, SettingsError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(USAGE, f"{self.prog}: error: {message}\n")


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="taskctl", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("status", help="this host's workers, queues, task counts, reaper")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--timeout", type=_positive, default=1.0,
                   help="seconds to wait for Celery workers to answer (default 1)")

    p = sub.add_parser("force-kill", help="cancel all, kill this host's workers, purge queues")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--force", action="store_true", help="do not ask for confirmation")
    mode.add_argument("--status", action="store_true", help="only report what it would do")
    p.add_argument("--timeout", type=_positive, default=1.0, help=argparse.SUPPRESS)

    p = sub.add_parser("monitor", help="live view of running tasks; `monitor kill ID`")
    p.add_argument("action", nargs="?", choices=["kill"], help="kill: end one task now")
    p.add_argument("task_id", nargs="?", help="task id (or a unique prefix) for kill")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--interval", type=_positive, default=0.5, help="seconds between frames")
    p.add_argument("--reason", default="monitor kill", help="recorded with the cancel")

    tree.add_parser(sub)

    p = sub.add_parser("cancel", help="cancel one task")
    p.add_argument("task_id")
    p.add_argument("--force", action="store_true", help="no grace period")
    p.add_argument("--reason")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("cancel-all", help="cancel every queued and running task")
    p.add_argument("--force", action="store_true", help="no grace period")
    p.add_argument("--reason")
    p.add_argument("--actor", help="only this actor's tasks")
    p.add_argument("--queue", help="only this queue's tasks")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("resume", help="start a new attempt of a cancelled, lost, failed or "
                                      "paused task")
    p.add_argument("task_id")
    p.add_argument("--json", action="store_true")

    drain.add_parser(sub)
    pauses.add_parsers(sub)
    token.add_parser(sub)

    p = sub.add_parser("submit", help="enqueue a task: ACTOR key=value ...")
    p.add_argument("actor")
    p.add_argument("kwargs", nargs="*", metavar="key=value")
    p.add_argument("--queue")
    p.add_argument("--countdown", type=float, help="seconds to wait before it may start")
    p.add_argument("--json", action="store_true")
    return parser


async def _dispatch(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    async with open_context(settings) as ctx:
        match args.command:
            case "status":
                return await status.run(ctx, console, as_json=args.json, timeout=args.timeout)
            case "force-kill":
                return await force_kill.run(ctx, console, force=args.force,
                                            status_only=args.status, timeout=args.timeout)
            case "monitor" if args.action == "kill":
                return await commands.cancel(ctx, console, args.task_id, force=True,
                                             reason=args.reason)
            case "monitor":
                return await monitor.run(ctx, console, once=args.once, interval=args.interval)
            case "tree":
                return await tree.run(ctx, console, args)
            case "cancel":
                return await commands.cancel(ctx, console, args.task_id, force=args.force,
                                             reason=args.reason, as_json=args.json)
            case "cancel-all":
                return await commands.cancel_all(ctx, console, force=args.force,
                                                 reason=args.reason, actor=args.actor,
                                                 queue=args.queue, as_json=args.json)
            case "resume":
                return await commands.resume(ctx, console, args.task_id, as_json=args.json)
            case "drain":
                return await drain.run(ctx, console, args)
            case command if command in pauses.COMMANDS:
                return await pauses.run(ctx, console, args)
            case "token":
                return await token.run(ctx, console, args)
            case "submit":
                return await commands.submit_task(ctx, console, args.actor, args.kwargs,
                                                  queue=args.queue, countdown=args.countdown,
                                                  as_json=args.json)
    raise CtlError(f"unknown command {args.command!r}")


def _changes_things(args: argparse.Namespace) -> bool:
    if args.command == "force-kill":
        return not args.status
    if args.command == "monitor":
        return args.action == "kill"
    return args.command not in ("status", "tree")


def _setup_logging(settings: Settings, args: argparse.Namespace) -> None:
    """What taskctl changes (cancels, kills, purges) is logged to logs/taskctl.log, like the
    services' own logs; looking around leaves no files behind. The terminal is for output."""
    if _changes_things(args):
        try:
            configure_logging(settings, "taskctl", console=False)
            return
        except OSError:
            pass
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        logger_factory=structlog.PrintLoggerFactory(sys.stderr))


def domain_error(exc: TaskreaperError) -> CtlError:
    """What taskctl says, and exits with, for a refusal of the domain: what the operator
    asked for is wrong (2), or it could not be done (1)."""
    match exc:
        case TaskNotFound():
            return bad_input(f"no task with id {exc.task_id}")
        case CancelConflict():
            return failed(f"task {exc.row['id']}: {exc}")
        case SubmitError():
            return bad_input(str(exc))
    return failed(str(exc))


def _complain(message: str) -> None:
    print(message, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "monitor" and args.action == "kill" and not args.task_id:
        parser.error("monitor kill needs a task id")
    try:
        settings = runfile.fill_in(Settings.from_env())
    except SettingsError as exc:
        _complain(f"taskctl: error: {exc}")
        return USAGE
    _setup_logging(settings, args)
    console = Console() if sys.stdout.isatty() else Console(width=200)
    try:
        return asyncio.run(_dispatch(args, settings, console))
    except CtlError as exc:
        _complain(f"taskctl: error: {exc}")
        return exc.code
    except TaskreaperError as exc:
        error = domain_error(exc)
        _complain(f"taskctl: error: {error}")
        return error.code
    except BrokenPipeError:  # `taskctl status --json | head`: the reader left, fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (redis.RedisError, asyncpg.PostgresError, OSError) as exc:
        _complain(f"taskctl: failed: {type(exc).__name__}: {exc}")
        return FAILED
    except KeyboardInterrupt:
        return 0 if args.command == "monitor" else 130


if __name__ == "__main__":
    sys.exit(main())
