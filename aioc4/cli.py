"""The command line: flags of the tool aioc4 replaces, one-line errors, and exit codes.

Exit codes: 0 done, 1 failed (nothing finished is lost), 2 bad usage, 130 interrupted (Ctrl-C),
143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .config import (
    COMPRESSIONS,
    DEFAULT_OUTPUT_DIR,
    S3_CHECKSUMS,
    SPLITS,
    BulkOptions,
    RunConfig,
    parse_s3_path,
)
from .errors import Aioc4Error, DestinationError, UsageError
from .report import RunSummary, failure_to_json, format_step_summary, format_summary, summary_to_json
from .sharding import parse_shard_selection, worker_slot

if TYPE_CHECKING:
    from .destination import Destination
    from .progress import ProgressDisplay

__all__ = ["build_parser", "config_from_args", "main"]

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
_TRIM_THRESHOLD = 16 * 1024 * 1024

log = logging.getLogger("aioc4")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not argparse's usage block."""
        raise UsageError(message)


def _count_or_all(text: str) -> int | str:
    return "all" if text == "all" else _positive_int(text)


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return int(text)


def _shard_selection(text: str) -> tuple[int, ...]:
    try:
        return parse_shard_selection(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--shards: ")) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aioc4",
        description="Download the first N documents of C4 into JSONL part files, locally or on S3.",
    )
    add = parser.add_argument
    add(
        "--output-dir",
        type=Path,
        default=DEFAULT_OUTPUT_DIR,
        help="where parts are written (default: %(default)s)",
    )
    add(
        "--num-samples",
        type=_count_or_all,
        default=1000,
        help="documents to download (default: %(default)s), or `all` for whole shards (a bulk pull)",
    )
    add("--split", choices=SPLITS, default="train", help="split to read (default: %(default)s)")
    add(
        "--streaming",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stream shards over HTTP and stop after N documents (default); --no-streaming downloads the "
        "needed shards whole into the Hub cache first",
    )
    add("--cache-dir", type=Path, help="Hub cache folder for --no-streaming (default: the standard HF cache)")
    add("--s3-path", help="upload parts to s3://bucket/prefix")
    add(
        "--cleanup-local",
        action="store_true",
        help="delete local parts after a verified upload (default with S3)",
    )
    add("--no-cleanup", action="store_true", help="keep local parts after uploading them")
    add("--max-lines-per-file", type=_positive_int, help="split output into parts of at most this many lines")
    add(
        "--compression",
        choices=COMPRESSIONS,
        default="none",
        help="store parts as .jsonl (none, default), .jsonl.gz (gzip) or .jsonl.zst (zstd)",
    )
    add(
        "--config",
        default="en",
        metavar="NAME",
        help="C4 variant: en (default), en.noblocklist, en.noclean, realnewslike, multilingual, or an mC4 "
        "language (af ... zu, en-multi), as the dataset card declares them",
    )
    add(
        "--shards",
        type=_shard_selection,
        metavar="LIST",
        help="only these shards, by number in the split's order, e.g. 0-99,200",
    )
    add(
        "--num-workers",
        type=_positive_int,
        help="bulk pulls on several machines: how many workers share the shards",
    )
    add(
        "--worker-index",
        type=_non_negative_int,
        help="this worker's index, 0-based (default: JOB_COMPLETION_INDEX or AWS_BATCH_JOB_ARRAY_INDEX)",
    )
    add(
        "--procs",
        type=_positive_int,
        help="bulk pulls: worker processes on this machine (default: one per core)",
    )
    add("--proc-index", type=_non_negative_int, help=argparse.SUPPRESS)  # set in --procs' children
    add("--repo-id", default="allenai/c4", help="dataset repo on the Hub (default: %(default)s)")
    add("--revision", default="main", help="branch, tag or commit to read (default: %(default)s)")
    add(
        "--endpoint-url",
        help="S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / AWS)",
    )
    add(
        "--upload-workers", type=_positive_int, default=4, help="parallel part uploads (default: %(default)s)"
    )
    add(
        "--retry-budget",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="total time the run may spend waiting between Hub retries (default: %(default)s)",
    )
    add(
        "--overwrite",
        action="store_true",
        help="replace an earlier, different job with the same manifest name (its parts are deleted)",
    )
    add(
        "--s3-checksum",
        choices=S3_CHECKSUMS,
        default="crc32",
        help="checksum S3 verifies on every upload: crc32 (default) or md5 for S3-compatible stores "
        "that reject botocore's newer checksums (some MinIO and R2 versions)",
    )
    add(
        "--dry-run",
        action="store_true",
        help="print the plan (commit, shards, bytes, part names, S3 keys) after the same preflight checks as "
        "a real run; reads Hub metadata only, transfers no document, writes nothing",
    )
    add(
        "--json", action="store_true", help="print the summary (or the plan, or the error) as one JSON object"
    )
    add("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    add("-v", "--verbose", action="store_true", help="debug logging on stderr")
    add("--version", action="version", version=f"aioc4 {__version__}")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    if args.cleanup_local and args.no_cleanup:
        raise UsageError("--cleanup-local and --no-cleanup contradict each other; pass one of them")
    if args.quiet and args.verbose:
        raise UsageError("--quiet and --verbose contradict each other; pass one of them")
    s3 = parse_s3_path(args.s3_path) if args.s3_path is not None else None
    cleanup = args.cleanup_local or (s3 is not None and not args.no_cleanup)
    bulk = _bulk_options(args) if args.num_samples == "all" else None
    if bulk is None:
        given = [
            flag
            for flag, value in (
                ("--num-workers", args.num_workers),
                ("--worker-index", args.worker_index),
                ("--procs", args.procs),
                ("--proc-index", args.proc_index),
            )
            if value is not None
        ]
        if given:
            raise UsageError(f"{', '.join(given)} split bulk pulls: they need --num-samples all")
    return RunConfig(
        num_samples=1 if bulk else args.num_samples,
        split=args.split,
        output_dir=args.output_dir,
        max_lines_per_file=args.max_lines_per_file,
        streaming=args.streaming,
        cache_dir=args.cache_dir,
        s3=s3,
        cleanup_local=cleanup,
        repo_id=args.repo_id,
        revision=args.revision,
        config_name=args.config,
        endpoint_url=args.endpoint_url,
        upload_workers=args.upload_workers,
        retry_budget_s=args.retry_budget,
        overwrite=args.overwrite,
        s3_checksum=args.s3_checksum,
        compression=args.compression,
        shards=args.shards,
        bulk=bulk,
    )


def _bulk_options(args: argparse.Namespace) -> BulkOptions:
    """The worker's slot from flags or the scheduler's environment; by default a process per core."""
    slot = worker_slot(args.num_workers, args.worker_index, os.environ)
    return BulkOptions(slot.index, slot.count, args.procs or os.cpu_count() or 1, args.proc_index)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    sys.exit(run_cli(argv))


def run_cli(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["verify"]:
        return _run_verify(arguments[1:])
    if arguments[:1] == ["merge"]:
        return _run_merge(arguments[1:])
    redact = _redactor()
    as_json = "--json" in arguments  # known before parsing, so that a usage error is JSON too
    config: RunConfig | None = None
    try:
        args = build_parser().parse_args(arguments)
        config = config_from_args(args)
    except Aioc4Error as exc:
        return _failed(exc.exit_code, str(exc), config, as_json=as_json, redact=redact)
    _configure_logging(quiet=args.quiet, verbose=args.verbose, redact=redact)
    try:
        if args.dry_run:
            return _dry_run(config, as_json=as_json, redact=redact)
        if config.bulk is not None and config.bulk.procs > 1 and config.bulk.proc_index is None:
            summary = _execute_processes(arguments, config)
        else:
            summary = _execute(config, _display(config, quiet=args.quiet or config.bulk is not None))
    except Aioc4Error as exc:
        return _failed(exc.exit_code, str(exc), config, as_json=as_json, redact=redact)
    except KeyboardInterrupt:  # pragma: no cover - SIGINT is handled by the loop; this is a fallback
        message = "interrupted; finished parts are kept; run the same command again to resume"
        return _failed(EXIT_INTERRUPTED, message, config, as_json=as_json, redact=redact)
    error = None
    if summary.failed:
        names = ", ".join(Path(path).name for path in summary.failed)
        error = f"{len(summary.failed)} part(s) did not reach S3 and are kept locally: {names}"
    code = EXIT_FAILED if error else EXIT_OK
    if as_json:
        _print_json(summary_to_json(summary, config, exit_code=code, error=error), redact)
        if not args.quiet:
            print(format_summary(summary), file=sys.stderr, flush=True)
    else:
        print(format_summary(summary), flush=True)
    _append_step_summary(format_step_summary(summary, config, exit_code=code, error=error), redact)
    if error:
        _fail(redact(error))
    return code


def _failed(
    code: int, message: str, config: RunConfig | None, *, as_json: bool, redact: Callable[[str], str]
) -> int:
    """The one error line on stderr; with --json also the failure object on stdout."""
    if as_json:
        _print_json(failure_to_json(config, code, message), redact)
    _append_step_summary(format_step_summary(None, config, exit_code=code, error=message), redact)
    _fail(redact(message))
    return code


def _print_json(document: dict[str, Any], redact: Callable[[str], str]) -> None:
    print(redact(json.dumps(document, ensure_ascii=False)), flush=True)


def _append_step_summary(markdown: str, redact: Callable[[str], str]) -> None:
    """GitHub Actions shows what a step appends to $GITHUB_STEP_SUMMARY on the run's page."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as file:
            file.write(redact(markdown))
    except OSError as exc:
        log.warning("cannot append to GITHUB_STEP_SUMMARY %s: %s", path, exc.strerror or exc)


def _display(config: RunConfig, *, quiet: bool) -> ProgressDisplay | None:
    """A bar on a terminal, plain lines every few seconds in logs and CI, nothing with -q."""
    from .progress import ProgressDisplay

    if quiet:
        return None
    bar = sys.stderr.isatty()
    display = ProgressDisplay(
        config.num_samples, bar=bar, parts_label="uploaded" if config.s3 is not None else "written"
    )
    log.debug("progress: %s every %.1f s", "a bar" if bar else "a line", display.interval_s)
    return display


def _dry_run(config: RunConfig, *, as_json: bool, redact: Callable[[str], str]) -> int:
    from .plan import format_plan, make_plan, plan_to_json

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        plan = runner.run(make_plan(config))
    if as_json:
        _print_json(plan_to_json(plan), redact)
    else:
        print(redact(format_plan(plan)), flush=True)
    return EXIT_OK


def _execute(config: RunConfig, display: ProgressDisplay | None = None) -> RunSummary:
    from huggingface_hub.utils.tqdm import disable_progress_bars

    from .bulk import run_bulk
    from .pipeline import StopRequest, run

    disable_progress_bars()  # aioc4 reports its own progress
    _tune_malloc()

    async def main_task() -> RunSummary:
        task = asyncio.current_task()
        assert task is not None
        stop = StopRequest()

        def on_signal(signum: int) -> None:
            """First signal: a graceful stop (uploads finish, manifest saved). Second, or before the
            pipeline runs (nothing to save): stop at once."""
            if stop.event.is_set() or not stop.pipeline_running:
                stop.signum = stop.signum or signum
                task.cancel()
            else:
                stop.request(signum)

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            if config.bulk is not None:
                return await run_bulk(config, stop)
            return await run(config, stop, display=display)
        except asyncio.CancelledError:
            if stop.signum:
                raise stop.error(kept=None) from None
            raise

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(main_task())


def _execute_processes(arguments: Sequence[str], config: RunConfig) -> RunSummary:
    """`--procs P`: P child processes share this worker's shards; then one summary over all of them."""
    import time

    from .bulk import check_destination, collect
    from .fanout import combined_exit_code, run_children
    from .pipeline import prepare_output_dir, remove_if_empty

    assert config.bulk is not None
    child_arguments = [argument for argument in arguments if argument != "--json"]  # one summary: ours
    started = time.monotonic()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(check_destination(config))
        created_dirs = prepare_output_dir(config.output_dir)  # made here: the parent removes it if empty
        codes = runner.run(run_children(child_arguments, config.bulk.procs))
        code = combined_exit_code(codes)
        if code != 0:
            remove_if_empty(created_dirs)
            failed = [index for index, child in enumerate(codes) if child != 0]
            raise _ChildrenFailed(
                f"{len(failed)} of {config.bulk.procs} worker process(es) failed (exit {code}); "
                "finished shards are kept: run the same command again to resume",
                code,
            )
        summary = runner.run(collect(config, created_dirs))
    summary.elapsed_seconds = time.monotonic() - started
    return summary


class _ChildrenFailed(Aioc4Error):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _merge_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aioc4 merge",
        description="Combine the shard manifests of a bulk pull (--num-samples all) at a folder or S3 "
        "prefix into the job's manifest; exits 1 while shards are missing or unfinished.",
    )
    parser.add_argument("target", help="a local folder or s3://bucket/prefix")
    parser.add_argument("--config", default="en", metavar="NAME", help="C4 variant (default: %(default)s)")
    parser.add_argument("--split", choices=SPLITS, default="train", help="split (default: %(default)s)")
    parser.add_argument(
        "--shards", type=_shard_selection, metavar="LIST", help="the selection that was pulled"
    )
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 / AWS)")
    return parser


def _run_merge(argv: Sequence[str]) -> int:
    from .merge import merge_at

    redact = _redactor()
    try:
        args = _merge_parser().parse_args(argv)
        if not args.target.startswith("s3://") and not Path(args.target).is_dir():
            raise UsageError(f"{args.target} is neither a folder nor an s3:// URL")

        async def merge() -> str:
            async with AsyncExitStack() as stack:
                destination = await _destination_at(args.target, args.endpoint_url, stack)
                name, manifest = await merge_at(destination, args.split, args.config, args.shards)
                return (
                    f"{destination.location(name)}: {len(manifest.parts)} part(s), "
                    f"{manifest.documents:,} documents"
                )

        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            text = runner.run(merge())
    except Aioc4Error as exc:
        _fail(redact(str(exc)))
        return exc.exit_code
    print(text, flush=True)
    return EXIT_OK


async def _destination_at(target: str, endpoint_url: str | None, stack: AsyncExitStack) -> Destination:
    """A folder or an S3 prefix to read manifests from (and save a combined one to)."""
    from .destination import LocalDestination
    from .uploader import S3Destination

    if not target.startswith("s3://"):
        return LocalDestination(Path(target))
    s3 = S3Destination(
        parse_s3_path(target),
        Path("."),
        job_prefix="",
        endpoint_url=endpoint_url,
        workers=4,
        cleanup_local=True,  # a manifest saved there is not also kept in the current folder
    )
    return await stack.enter_async_context(s3)


def _verify_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aioc4 verify",
        description="Check every part listed in the manifests at a folder or S3 prefix: present, size, "
        "CRC-32 and line count. Exits 1 on any mismatch.",
    )
    parser.add_argument("target", help="a local folder or s3://bucket/prefix")
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 / AWS)")
    return parser


def _run_verify(argv: Sequence[str]) -> int:
    redact = _redactor()
    try:
        args = _verify_parser().parse_args(argv)
        if not args.target.startswith("s3://") and not Path(args.target).is_dir():
            raise UsageError(f"{args.target} is neither a folder nor an s3:// URL")
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            text, ok = runner.run(_verify(args.target, args.endpoint_url))
    except Aioc4Error as exc:
        _fail(redact(str(exc)))
        return exc.exit_code
    print(text, flush=True)
    if not ok:
        _fail(f"{args.target} does not match its manifest(s)")
    return EXIT_OK if ok else EXIT_FAILED


async def _verify(target: str, endpoint_url: str | None) -> tuple[str, bool]:
    from .manifest import Manifest
    from .verify import PartFacts, format_report, verify_manifest

    async with AsyncExitStack() as stack:
        destination = await _destination_at(target, endpoint_url, stack)
        seen: dict[str, PartFacts | None] = {}

        async def inspect_once(name: str) -> PartFacts | None:
            """A bulk pull lists each part in its shard's manifest and in the job's: read it once."""
            if name not in seen:
                seen[name] = await destination.inspect(name)
            return seen[name]

        names = await destination.list_manifests()
        if not names:
            raise DestinationError(f"no aioc4 manifest (*.manifest.json) in {target}")
        reports = []
        for name in names:
            data = await destination.load_manifest(name)
            if data is None:
                raise DestinationError(f"{destination.location(name)} disappeared while verifying")
            manifest = Manifest.from_json(data, where=destination.location(name))
            reports.append(await verify_manifest(name, manifest, inspect_once))
    return format_report(target.rstrip("/"), reports), all(not report.problems for report in reports)


def _tune_malloc() -> None:
    """Two glibc settings, both measured:

    - glibc raises its mmap threshold after large frees, so the 8 MiB upload bodies aioc4 cycles
      through end up in per-thread heaps that never shrink (peak RSS of an S3 run: 245 MB instead
      of 145 MB). A fixed 4 MiB threshold maps each such body on its own and returns it when freed,
      while the ~1.2 MB decoded blocks keep being recycled from the heap (mapping those costs 20%).
    - glibc gives the top of a heap back to the kernel as soon as 128 KiB of it are free, so every
      decoded block was faulted in afresh: 100k+ page faults for 200k documents. Keeping up to
      `_TRIM_THRESHOLD` free cuts them to about 20k and the run's time by ~10%; the memory stays
      bounded by the pipeline's queues, so peak RSS is unchanged.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 4 * 1024 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return None
    return uvloop.new_event_loop


def _redactor() -> Callable[[str], str]:
    """Replaces any secret this process knows (HF token, AWS keys) with '***'."""
    secrets = {
        os.environ.get(name, "") for name in ("HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    }
    secrets.add(os.environ.get("AWS_ACCESS_KEY_ID", ""))
    try:
        from huggingface_hub import get_token

        secrets.add(get_token() or "")
    except Exception:  # pragma: no cover - a broken token cache must not stop error reporting
        pass
    secrets = {secret for secret in secrets if len(secret) >= 4}

    def redact(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    return redact


class _RedactingFilter(logging.Filter):
    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self._redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._redact(record.getMessage())
        record.args = None
        return True


class _ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr; while a progress bar is showing, lines are written around it (tqdm clears and redraws it)."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm_module = sys.modules.get("tqdm")  # not imported: no bar can be showing
        if tqdm_module is None or not getattr(tqdm_module.tqdm, "_instances", None):
            super().emit(record)
            return
        try:
            tqdm_module.tqdm.write(self.format(record), file=self.stream)
        except Exception:  # pragma: no cover - as logging does for a broken stream
            self.handleError(record)


def _configure_logging(*, quiet: bool, redact: Callable[[str], str], verbose: bool = False) -> None:
    handler = _ConsoleHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("aioc4: %(message)s"))
    handler.addFilter(_RedactingFilter(redact))
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def _fail(message: str) -> None:
    print(f"aioc4: error: {message}", file=sys.stderr, flush=True)
