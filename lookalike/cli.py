"""`lookalike` command line: services, the embedded stack, and user commands."""

from __future__ import annotations

import argparse
import asyncio
import io
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from schemas.settings import Settings

if TYPE_CHECKING:
    from lookalike.supervisor import ProcessEvent


# Commands for people at a terminal: readable log lines instead of JSON.
CONSOLE_COMMANDS = (
    "up",
    "demo",
    "upload",
    "search",
    "backfill",
    "reextract",
    "status",
    "create-topics",
)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command in CONSOLE_COMMANDS:
        settings = settings.model_copy(update={"log_format": "console"})
    from lookalike.logs import configure_logging

    configure_logging(settings, service=args.command)
    result: int = args.func(settings, args)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lookalike", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="start the embedded stack, upload samples, search")
    p.add_argument("--keep-running", action="store_true", help="stay up until Ctrl-C")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("up", help="run the embedded stack until Ctrl-C")
    p.add_argument("--extractors", type=int, default=1, help="processes per extractor group")
    p.add_argument("--shards", type=int, default=1, help="indexer shards (partition sets)")
    p.add_argument("--replicas", type=int, default=1, help="indexer processes per shard")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("extractor", help="run an extractor (consumer-group member)")
    p.add_argument("--features", help="comma-separated; default LOOKALIKE_FEATURES")
    p.set_defaults(func=lambda s, a: _service("run_extractor", _with_features(s, a.features)))
    p = sub.add_parser("indexer", help="run an indexer and search service")
    p.set_defaults(func=lambda s, a: _service("run_indexer_service", s))
    p = sub.add_parser("s3-gateway", help="embedded S3 server that publishes bucket events")
    p.add_argument("--port", type=int, required=True)
    p.set_defaults(func=lambda s, a: _service_with_port("run_gateway", s, a.port))
    p = sub.add_parser("http", help="the HTTP API and web page (a Kafka and S3 client)")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=lambda s, a: _service_with_port("run_http", s, a.port))
    p = sub.add_parser("asyncapi", help="write docs/asyncapi.json (every topic and message)")
    p.set_defaults(func=cmd_asyncapi)
    p = sub.add_parser("create-topics", help="create every topic (idempotent)")
    p.set_defaults(func=cmd_create_topics)

    p = sub.add_parser(
        "backfill", help="reconcile now: every indexer compares its indexes with the bucket"
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for reports")
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser("status", help="processes, indexers and extractor groups: lag, sizes")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds indexers get to answer")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("trace", help="one image's stages and their times, from the logs")
    p.add_argument("image", help="bucket/key, or a key in the configured bucket")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser(
        "rebuild", help="rebuild an index from the store or its topic, swapping it in live"
    )
    p.add_argument("feature", help="phash, colour or clip")
    p.add_argument("--source", choices=["store", "topic"], default="store")
    p.add_argument(
        "--allow-shrink",
        action="store_true",
        help="topic: replace the index even if the topic holds fewer images than it",
    )
    p.add_argument("--timeout", type=float, default=3600.0)
    p.set_defaults(func=cmd_rebuild)

    p = sub.add_parser(
        "replay", help="re-run extraction for the image events since a time or offset"
    )
    since = p.add_mutually_exclusive_group(required=True)
    since.add_argument(
        "--from-time", type=datetime.fromisoformat, help="ISO time, e.g. 2026-11-23T14:00:00+00:00"
    )
    since.add_argument("--from-offset", type=int, help="this offset in every partition")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("reextract", help="re-run extraction for every image (bucket scan)")
    p.set_defaults(func=cmd_reextract)

    p = sub.add_parser("upload", help="put image files into the bucket")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--prefix", default="", help="key prefix, e.g. 'uploads/'")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("search", help="search through the request-reply topic")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", type=Path, help="an image file")
    what.add_argument("--id", dest="image_id", help="an indexed bucket/key")
    what.add_argument("--text", help="a text query (features with a text tower)")
    p.add_argument("--feature", default="all", help="a feature, or 'all' (fused, default)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--max-distance", type=float)
    p.set_defaults(func=cmd_search)
    return parser


def cmd_asyncapi(settings: Settings, args: argparse.Namespace) -> int:
    from lookalike.asyncapi import write

    print(f"wrote {write()}")
    return 0


def cmd_trace(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console

    from lookalike.trace_view import render_trace, steps_of

    image_id = args.image if "/" in args.image else f"{settings.bucket}/{args.image}"
    steps = steps_of(settings.data_dir / "logs", image_id)
    if not steps and not args.image.startswith(f"{settings.bucket}/"):
        image_id = f"{settings.bucket}/{args.image}"  # a key with slashes, without the bucket
        steps = steps_of(settings.data_dir / "logs", image_id)
    render_trace(image_id, steps, Console())
    return 0 if steps else 1


def _with_features(settings: Settings, features: str | None) -> Settings:
    return settings if not features else settings.model_copy(update={"features": features})


def _service(name: str, settings: Settings) -> int:
    from lookalike import services

    getattr(services, name)(settings)
    return 0


def _service_with_port(name: str, settings: Settings, port: int) -> int:
    from lookalike import services

    getattr(services, name)(settings, port)
    return 0


def _sigterm_as_ctrl_c() -> None:
    """`up` and `demo` stop every child cleanly on Ctrl-C; SIGTERM (kill, CI) does the same."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from lookalike.demo import run_demo
    from lookalike.stack import Stack

    _sigterm_as_ctrl_c()
    stack = Stack(settings.data_dir, on_process_event=_print_process_event)
    run_demo(stack, keep_running=args.keep_running)
    return 0


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from lookalike.stack import Stack

    _sigterm_as_ctrl_c()
    stack = Stack(
        settings.data_dir,
        extractors=args.extractors,
        shards=args.shards,
        replicas=args.replicas,
        on_process_event=_print_process_event,
    )
    try:
        stack.start()
        print(
            f"Embedded stack up; settings in {stack.data_dir / 'stack.env'}. "
            "Processes that die are restarted; `lookalike status` shows them. Ctrl-C stops it."
        )
        stack.serve_until_interrupted()
    finally:
        stack.stop()
    return 0


def _print_process_event(event: ProcessEvent) -> None:
    """`lookalike up`'s console: which process died and why, and when it is back."""
    from lookalike.supervisor import EventKind

    if event.kind is EventKind.DIED:
        lines = [f"!! {event.name} (pid {event.pid}) died: {event.reason}; log {event.log_path}"]
        lines += [f"   | {line[:200]}" for line in event.log_tail[-3:]]
        lines.append(f"   restarting it in {event.delay_s:g}s")
    elif event.kind is EventKind.RESTARTED:
        lines = [f"ok {event.name} restarted (pid {event.pid}, restart {event.restarts})"]
    else:
        lines = [f"!! {event.name} not restarted: {event.reason}; next try in {event.delay_s:g}s"]
    print("\n".join(lines), flush=True)  # from the supervisor thread, at once


def cmd_create_topics(settings: Settings, args: argparse.Namespace) -> int:
    from lookalike.topics import create_topics

    asyncio.run(create_topics(settings))
    return 0


def cmd_backfill(settings: Settings, args: argparse.Namespace) -> int:
    """Reconciliation on demand: the indexers compare with the bucket and repair."""
    from aiokafka.errors import KafkaError
    from rich.console import Console

    from lookalike.backfill_view import backfill, reconcile_table, summary
    from producers.search_client import SearchTimeout

    console = Console()
    try:
        reports = asyncio.run(backfill(settings, args.timeout, Console(stderr=True)))
    except SearchTimeout:
        console.print(f"[red]no indexer answered within {args.timeout:g}s[/] (is the stack up?)")
        return 1
    except KafkaError as exc:
        console.print(f"[red]broker {settings.kafka_bootstrap} unreachable:[/] {exc}")
        return 1
    console.print(reconcile_table(reports))
    console.print(summary(reports), highlight=False)
    return 0 if all(r.ok for r in reports) else 1


def cmd_reextract(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console

    from lookalike.backfill_view import reextract_with_progress

    done = asyncio.run(reextract_with_progress(settings, Console(stderr=True)))
    print(f"listed {done.listed} objects: {done.published} created events for their images")
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console

    from lookalike.status_view import gather_status, render_status

    report = asyncio.run(gather_status(settings, timeout=args.timeout))
    render_status(report, settings, Console())
    return 0 if report.healthy else 1


def cmd_rebuild(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console

    from lookalike.rebuild_view import print_reports, rebuild_with_progress
    from schemas.control import RebuildCommand, RebuildSource

    command = RebuildCommand(
        feature=args.feature, source=RebuildSource(args.source), allow_shrink=args.allow_shrink
    )
    console = Console()
    reports = asyncio.run(rebuild_with_progress(settings, command, args.timeout, console))
    return 0 if print_reports(reports, console) else 1


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from producers.replay_events import replay_image_events

    since: datetime | None = args.from_time
    if since is not None and since.tzinfo is None:
        since = since.astimezone()  # a time without a zone is local time
    with Progress() as bar:
        line = bar.add_task(f"replaying {settings.image_events_topic}", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(line, completed=done, total=total)

        count = asyncio.run(replay_image_events(settings, since, args.from_offset, progress))
    print(f"published {count:,} image events again; extractors describe those objects anew")
    return 0


def cmd_upload(settings: Settings, args: argparse.Namespace) -> int:
    from rich.progress import track

    from lookalike.s3 import s3_client
    from producers.uploads import ensure_bucket, upload_files

    s3 = s3_client(settings)
    ensure_bucket(s3, settings.bucket)
    paths: list[Path] = args.paths
    if len(paths) == 1:
        for key in upload_files(s3, settings.bucket, paths, args.prefix):
            print(f"uploaded {settings.bucket}/{key}")
        return 0
    for path in track(paths, description=f"uploading to {settings.bucket}"):
        upload_files(s3, settings.bucket, [path], args.prefix)
    print(f"uploaded {len(paths)} files to {settings.bucket}/{args.prefix}")
    return 0


def cmd_search(settings: Settings, args: argparse.Namespace) -> int:
    from lookalike.demo import print_reply
    from producers.search_client import SearchClient
    from schemas.search import SearchRequest

    image = _query_image(args.image, settings.max_query_image_bytes) if args.image else None
    request = SearchRequest(
        feature=args.feature,
        k=args.k,
        max_distance=args.max_distance,
        image_id=args.image_id,
        image=image,
        text=args.text,
    )

    async def run() -> bool:
        async with SearchClient(settings) as client:
            reply = await client.search(request)
        print_reply(f"Results for {args.image or args.image_id or repr(args.text)}", reply)
        return reply.ok

    return 0 if asyncio.run(run()) else 1


def _query_image(path: Path, limit: int) -> bytes:
    """Big files are shrunk here: features look at <= 256 px, Kafka messages are ~1 MB max."""
    data = path.read_bytes()
    if len(data) <= limit:
        return data
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.thumbnail((1024, 1024))
        out = io.BytesIO()
        img.convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


if __name__ == "__main__":
    sys.exit(main())
