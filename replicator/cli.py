"""The ``replicator`` command line. Exit codes: 0 success, 1 some items failed, 2 bad usage
or configuration."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

from drivers.errors import ConfigError, StorageError
from replicator import config as config_module
from replicator import demo, layout, logs
from replicator.audit import AuditWriter, history, history_text
from replicator.audit_shipping import ship_configured
from replicator import plan as plan_module
from replicator.engine import RunOptions, run_policy
from replicator.flavours import resolve_all_flavours
from replicator.progress import Progress, redraw
from replicator.purging import recover_purges
from replicator.report import PassReport, run_document, run_text
from replicator.sharding import Shard, parse_shard
from replicator.status import destination_statuses, status_text
from replicator.verify import verify_policy
from state.store import StateStore

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Version(argparse.Action):
    """``--version``: reads the installed package's metadata only when asked (importing
    ``importlib.metadata`` costs every other command's start-up a tenth of its imports)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version
        try:
            text = version("replicator")
        except PackageNotFoundError:
            text = "unknown"
        print(f"replicator {text}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="replicator",
        description="Replicate Docker Distribution registry storage between regions.")
    parser.add_argument("--version", action=_Version)
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"],
                        help="log verbosity on stderr (default: warning)")
    parser.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="text lines, or one JSON object per line with policy, destination, "
                             "repository, tag and digest fields (default: text)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sync = commands.add_parser("sync", help="run one replication pass of every policy (or one)")
    _config_argument(sync)
    sync.add_argument("--policy", help="run only the policy with this name")
    _shard_argument(sync)
    sync.add_argument("--dry-run", action="store_true",
                      help="print what would be copied, written and deleted; write nothing")
    sync.add_argument("--json", action="store_true", help="print one JSON document")
    sync.add_argument("--quiet", action="store_true",
                      help="no progress display (there is none anyway when stderr is not a terminal)")
    sync.add_argument("--audit", action="store_true",
                      help="re-read every link and re-check every tag's content at the "
                           "destinations, trusting no cached state (repairs drift)")
    sync.add_argument("--force-delete", action="store_true",
                      help="delete the tags a policy's deletion guards allow even when they "
                           "are more than its max_delete")
    sync.add_argument("--respect-windows", action="store_true",
                      help="leave out destinations outside their sync windows (for cron jobs); "
                           "by default sync runs into every destination")
    sync.add_argument("--plan", metavar="PLAN.json",
                      help="apply this saved plan and nothing else: only its tags, each only if "
                           "the source still has the digest the plan recorded")

    plan_parser = commands.add_parser(
        "plan", help="show what a sync would copy, write and delete, its requests and its cost")
    _config_argument(plan_parser)
    plan_parser.add_argument("--policy", help="plan only the policy with this name")
    _shard_argument(plan_parser)
    plan_parser.add_argument("--json", action="store_true", help="print one JSON document")
    plan_parser.add_argument("--out", metavar="PLAN.json",
                             help="save the plan for `sync --plan` (the --json document)")

    serve = commands.add_parser(
        "serve", help="run policies on their schedules, take push notifications, serve metrics")
    _config_argument(serve)
    _shard_argument(serve)

    status = commands.add_parser(
        "status", help="show lag, pending and failing tags per destination (from the state store)")
    _config_argument(status)
    status.add_argument("--json", action="store_true", help="print one JSON document")

    verify_parser = commands.add_parser(
        "verify", help="check that every destination serves what its source serves")
    _config_argument(verify_parser)
    verify_parser.add_argument("--policy", help="verify only the policy with this name")
    verify_parser.add_argument("--deep", action="store_true",
                               help="re-hash every referenced blob (reads every byte)")
    verify_parser.add_argument("--json", action="store_true", help="print one JSON document")

    history = commands.add_parser(
        "history", help="show the changes applied to destinations for a repository or tag "
                        "(from the audit trail)")
    _config_argument(history)
    history.add_argument("reference", metavar="REPO[:TAG]", help="a repository, or one of its tags")
    history.add_argument("--destination", help="only changes applied to this region")
    history.add_argument("--json", action="store_true", help="print one JSON document")
    wait = commands.add_parser(
        "wait", help="wait until every destination serves an image (a deploy barrier)")
    _config_argument(wait)
    wait.add_argument("image", metavar="IMAGE",
                      help="name:tag, name@sha256:<hex> or name:tag@sha256:<hex>")
    wait.add_argument("--destination", action="append", default=[], metavar="NAME",
                      help="wait for this destination only (repeatable; default: all of them)")
    wait.add_argument("--timeout", default="15m", help="give up after this long (default: 15m)")
    wait.add_argument("--interval", default="2s", help="time between checks (default: 2s)")
    wait.add_argument("--through-cdn", action="store_true",
                      help="also GET the manifest through each cdn.baseurls entry")
    wait.add_argument("--json", action="store_true", help="print one JSON document")

    demo_parser = commands.add_parser(
        "demo", help="build a small registry, replicate it to two regions and verify them")
    demo_parser.add_argument("--workdir", type=Path, default=Path("demo-work"),
                             help="folder for the demo's regions (default: ./demo-work)")
    return parser


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.environ.get("REPLICATOR_CONFIG"),
                        help="configuration file (default: $REPLICATOR_CONFIG)")


def _shard_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shard", default="0/1", metavar="INDEX/COUNT",
                        help="own only this shard's repositories (INDEX may be 'auto': the "
                             "StatefulSet ordinal ending the hostname); default 0/1")


def _shard(args: argparse.Namespace) -> Shard:
    return parse_shard(args.shard, socket.gethostname())


def _load_config(args: argparse.Namespace, clients: bool = True) -> config_module.Config:
    if not args.config:
        raise ConfigError("--config", "is required (or set REPLICATOR_CONFIG)")
    return config_module.load(args.config, clients=clients)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    try:
        if args.command == "demo":
            return demo.run(args.workdir)
        command = {"sync": _sync, "serve": _serve, "status": _status, "verify": _verify,
                   "history": _history, "wait": _wait, "plan": _plan}[args.command]
        return command(args)
    except ConfigError as error:
        print(f"replicator: configuration error: {error}", file=sys.stderr)
        return EXIT_USAGE


def _sync(args: argparse.Namespace) -> int:
    config = _load_config(args)
    policies = [config.policy(args.policy)] if args.policy else list(config.policies)
    saved = plan_module.load_saved(args.plan, config) if args.plan else None
    if saved is not None:
        policies = [policy for policy in policies if policy.name in saved]
    progress = Progress(sys.stderr) if sys.stderr.isatty() and not args.quiet else None
    trail = AuditWriter(config.audit_log) if config.audit_log and not args.dry_run else None
    options = RunOptions.from_config(config, dry_run=args.dry_run, audit=args.audit,
                                     shard=_shard(args), wait_for_purges=not args.dry_run,
                                     on_pass=progress.start_pass if progress else None,
                                     on_change=trail.append if trail else None,
                                     force_delete=args.force_delete,
                                     respect_windows=args.respect_windows)
    started = time.monotonic()
    reports: list[PassReport] = []
    state = StateStore(config.state_path)
    if not args.dry_run:
        recover_purges(config.regions, state)
    try:
        for policy in policies:
            planned = {} if saved is None else {"planned": saved[policy.name]}
            reports.extend(run_policy(config, policy, state, replace(options, **planned)))
        outstanding = {name: [item.url for item in state.outstanding_purges(name)]
                       for name, region in config.regions.items() if region.cdn is not None}
        if trail is not None:
            ship_configured(config)
    finally:
        state.close()
        if progress is not None:
            progress.close()
    duration = time.monotonic() - started
    requests = {name: region.requests.snapshot() for name, region in config.regions.items()}
    if args.json:
        cdn_calls = {name: region.cdn.purger.calls for name, region in config.regions.items()
                     if region.cdn is not None}
        document = run_document(reports, requests, cdn_calls, duration, args.dry_run, outstanding)
        print(json.dumps(document, indent=2))
    else:
        print(run_text(reports, duration, args.dry_run))
    return EXIT_OK if all(report.ok for report in reports) else EXIT_FAILED


def _plan(args: argparse.Namespace) -> int:
    config = _load_config(args)
    policies = [config.policy(args.policy)] if args.policy else list(config.policies)
    document = plan_module.make_plan(config, policies,
                                     RunOptions.from_config(config, shard=_shard(args)))
    if args.out:
        try:
            Path(args.out).write_text(json.dumps(document, indent=2))
        except OSError as error:
            raise ConfigError("--out", f"cannot write {args.out}: {error.strerror}") from None
    print(json.dumps(document, indent=2) if args.json else plan_module.text(document))
    return EXIT_OK if document["ok"] else EXIT_FAILED


def _status(args: argparse.Namespace) -> int:
    config = _load_config(args, clients=False)   # the state store alone: no credentials needed
    state = StateStore(config.state_path)
    try:
        statuses = destination_statuses(config, state)
    finally:
        state.close()
    if args.json:
        print(json.dumps({"destinations": [status.as_dict() for status in statuses]}, indent=2))
    else:
        print(status_text(statuses))
    return EXIT_OK


def _history(args: argparse.Namespace) -> int:
    config = _load_config(args, clients=False)   # the local audit trail alone
    if config.audit_log is None:
        raise ConfigError("audit", "is not configured: there is no audit trail to read")
    repository, _, tag = args.reference.rpartition(":") if ":" in args.reference else (args.reference, "", "")
    try:
        layout.check_name(repository)
        if tag:
            layout.check_tag(tag)
    except layout.LayoutError as error:
        raise ConfigError("REPO[:TAG]", str(error)) from None
    lines = history(config.audit_log.path, repository, tag or None, args.destination)
    print(json.dumps({"changes": lines}, indent=2) if args.json else history_text(lines))
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from replicator.service import Service
    from replicator.web import WebServer
    config = _load_config(args)
    resolve_all_flavours(config)
    shard = _shard(args)
    state = StateStore(config.state_path)
    service = Service(config, state, shard)
    try:
        server = WebServer(service, config.server.host, config.server.port)
    except OSError as error:
        state.close()
        raise ConfigError("server.listen", f"cannot listen: {error.strerror}") from None
    stop = service.halted
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    service.start()
    host, port = server.server_address[:2]
    logging.getLogger("replicator").warning("serving on http://%s:%s", host, port)
    stop.wait()
    logging.getLogger("replicator").warning("stopping: finishing tags under way")
    service.stop()
    server.shutdown()
    server.server_close()
    state.close()
    if service.config_error is not None:
        raise service.config_error
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    config = _load_config(args)
    policies = [config.policy(args.policy)] if args.policy else list(config.policies)
    results = []
    try:
        for policy in policies:
            results.extend(verify_policy(config, policy, args.deep))
    except StorageError as error:
        print(f"replicator: verify failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    drift = any(result.drift for result in results)
    if args.json:
        print(json.dumps({"ok": not drift, "deep": args.deep,
                          "destinations": [asdict(result) for result in results]}, indent=2))
    else:
        for result in results:
            print(f"{result.policy}: {result.source} -> {result.destination}: {result.tags_checked} "
                  f"tags, {result.manifests_checked} manifests, {result.blobs_checked} blob "
                  f"references, {result.bytes_hashed} bytes re-hashed, {len(result.drift)} problems")
            for item in result.drift:
                print(f"  {item.kind} {item.repository}:{item.tag}: {item.detail}")
    return EXIT_FAILED if drift else EXIT_OK


def _wait(args: argparse.Namespace) -> int:
    from replicator.barrier import BadReference, Barrier, BarrierError, parse_reference
    timeout = config_module.duration(args.timeout, "--timeout", allow_zero=True)
    interval = config_module.duration(args.interval, "--interval")
    try:
        reference = parse_reference(args.image)
    except BadReference as error:
        raise ConfigError("IMAGE", str(error)) from None
    config = _load_config(args)
    state = StateStore(config.state_path) if Path(config.state_path).exists() else None
    terminal = sys.stderr.isatty()
    try:
        barrier = Barrier(config, state, reference, args.destination, args.through_cdn)
        status = barrier.wait(timeout, interval, on_check=(
            lambda current: redraw(sys.stderr, current.summary())) if terminal else None)
    except BarrierError as error:
        print(f"replicator: {error}", file=sys.stderr)
        return EXIT_USAGE
    except StorageError as error:
        print(f"replicator: cannot read the source: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if state is not None:
            state.close()
    if terminal:
        redraw(sys.stderr, status.summary(), final=True)
    if args.json:
        print(json.dumps(status.as_dict(), indent=2))
    else:
        outcome = "every destination serves it" if status.in_sync else "NOT everywhere yet"
        print(f"{status.image}: {outcome}")
        for destination in status.destinations:
            print(f"  {destination.text()}")
    return EXIT_OK if status.in_sync else EXIT_FAILED
