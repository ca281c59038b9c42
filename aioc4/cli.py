"""The command line: flags of the tool aioc4 replaces, one-line errors, and exit codes.

Exit codes: 0 done, 1 failed (nothing finished is lost), 2 bad usage, 130 interrupted (Ctrl-C),
143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ._version import __version__
from .config import (
    COMPRESSIONS,
    DEFAULT_OUTPUT_DIR,
    DEFAULT_UPLOAD_CONNECTIONS,
    MAX_CONNECTIONS,
    MAX_COUNT,
    MAX_PROCS,
    MAX_RETRY_BUDGET_S,
    MAX_TIMEOUT_S,
    MAX_UPLOAD_WORKERS,
    S3_CHECKSUMS,
    SPLITS,
    BulkOptions,
    RunConfig,
    check_http_url,
    hub_endpoint,
    parse_count,
    parse_s3_path,
    s3_endpoint,
)
from .console import append_step_summary, configure_logging, known_secrets_redactor, print_error, print_json
from .errors import Aioc4Error, ChildrenFailedError, DestinationError, UsageError
from .rate import parse_rate
from .readahead import DEFAULT_DOWNLOAD_CONNECTIONS
from .redact import Redactor
from .report import (
    RunSummary,
    destination_of,
    failure_to_json,
    format_step_summary,
    format_summary,
    summary_to_json,
)
from .resources import MAX_DEFAULT_DECODE_PROCS, default_decode_procs, default_procs, machine_limits
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
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # `--num-sample 10` is a typo, not --num-samples
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """One line, not argparse's usage block."""
        raise UsageError(message)


def _count(minimum: int = 1, maximum: int = MAX_COUNT) -> Callable[[str], int]:
    """An argparse type: ASCII digits within `minimum..maximum` (see aioc4.config.parse_count)."""

    def parse(text: str) -> int:
        try:
            return parse_count(text, minimum=minimum, maximum=maximum)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _rate(text: str) -> float:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count_or_all(text: str) -> int | str:
    return "all" if text == "all" else _count()(text)


def _seconds(maximum: float, *, zero: bool) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds up to `maximum` (0 itself only with `zero`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
        if not math.isfinite(value) or value > maximum or value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(
                f"must be a number of seconds within 0..{maximum:.0f}, got {text!r}"
            )
        return value

    return parse


def _shard_selection(text: str) -> tuple[int, ...]:
    try:
        return parse_shard_selection(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--shards: ")) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aioc4",
        description="Download the first N documents of C4 into JSONL part files, locally or on S3.",
        epilog="Run `aioc4 COMMAND --help` for the other commands.",
    )
    _add_pull_arguments(parser)
    commands = parser.add_subparsers(
        dest="command",
        title="other commands",
        metavar="COMMAND",
        description="`aioc4 [flags]` pulls documents; these check and combine what was pulled:",
    )
    verify = commands.add_parser(
        "verify",
        help="check every part the manifests at a folder or S3 prefix list",
        description="Check every part listed in the manifests at a folder or S3 prefix: present, size, "
        "CRC-32 and line count. Exits 1 on any mismatch.",
    )
    verify.add_argument("target", help="a local folder or s3://bucket/prefix")
    verify.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 / AWS)")
    merge = commands.add_parser(
        "merge",
        help="combine the shard manifests of a bulk pull into the job's manifest",
        description="Combine the shard manifests of a bulk pull (--num-samples all) at a folder or S3 "
        "prefix into the job's manifest; exits 1 while shards are missing or unfinished.",
    )
    merge.add_argument("target", help="a local folder or s3://bucket/prefix")
    merge.add_argument("--config", default="en", metavar="NAME", help="C4 variant (default: %(default)s)")
    merge.add_argument("--split", choices=SPLITS, default="train", help="split (default: %(default)s)")
    merge.add_argument(
        "--shards", type=_shard_selection, metavar="LIST", help="the selection that was pulled"
    )
    merge.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 / AWS)")
    return parser


def _parse(arguments: Sequence[str]) -> argparse.Namespace:
    """Parse the command line; a mistyped flag is named as such, not taken for an unknown command."""
    try:
        return build_parser().parse_args(arguments)
    except UsageError as exc:
        if not str(exc).startswith("argument COMMAND: invalid choice"):
            raise
        flags_only = _Parser(prog="aioc4")
        _add_pull_arguments(flags_only)
        _, unknown = flags_only.parse_known_args(arguments)
        if any(argument.startswith("-") for argument in unknown):
            raise UsageError(f"unrecognized arguments: {' '.join(unknown)}") from None
        raise


def _add_pull_arguments(parser: argparse.ArgumentParser) -> None:
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
    add("--max-lines-per-file", type=_count(), help="split output into parts of at most this many lines")
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
        type=_count(maximum=1_000_000),
        help="bulk pulls on several machines: how many workers share the shards",
    )
    add(
        "--worker-index",
        type=_count(minimum=0, maximum=1_000_000),
        help="this worker's index, 0-based (default: JOB_COMPLETION_INDEX or AWS_BATCH_JOB_ARRAY_INDEX)",
    )
    add(
        "--procs",
        type=_count(maximum=MAX_PROCS),
        help="worker processes on this machine: a count job decodes this many shards at once, a bulk "
        "pull runs this many pulls (default: one per CPU this process may use, as memory allows; "
        f"for a count job at most {MAX_DEFAULT_DECODE_PROCS})",
    )
    add(
        "--proc-index", type=_count(minimum=0, maximum=MAX_PROCS), help=argparse.SUPPRESS
    )  # --procs' children
    add("--repo-id", default="allenai/c4", help="dataset repo on the Hub (default: %(default)s)")
    add("--revision", default="main", help="branch, tag or commit to read (default: %(default)s)")
    add(
        "--endpoint-url",
        help="S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / AWS)",
    )
    add(
        "--upload-workers",
        type=_count(maximum=MAX_UPLOAD_WORKERS),
        default=8,
        help="parallel part uploads (default: %(default)s)",
    )
    add(
        "--download-connections",
        type=_count(maximum=MAX_CONNECTIONS),
        default=DEFAULT_DOWNLOAD_CONNECTIONS,
        metavar="N",
        help="range requests to the Hub's storage in flight at most, per process reading shards; fewer "
        "open while they keep up (default: %(default)s)",
    )
    add(
        "--upload-connections",
        type=_count(maximum=MAX_CONNECTIONS),
        default=DEFAULT_UPLOAD_CONNECTIONS,
        metavar="N",
        help="S3 upload requests in flight at most, multipart chunks included (default: %(default)s)",
    )
    add(
        "--max-download-rate",
        type=_rate,
        metavar="RATE",
        help="cap on download bytes per second over all connections, e.g. 50M or 1.5G (default: none)",
    )
    add(
        "--max-upload-rate",
        type=_rate,
        metavar="RATE",
        help="cap on S3 upload bytes per second over all requests, e.g. 50M (default: none)",
    )
    add(
        "--retry-budget",
        type=_seconds(MAX_RETRY_BUDGET_S, zero=True),
        default=600.0,
        metavar="SECONDS",
        help="total time the run may spend waiting between Hub retries (default: %(default)s)",
    )
    add(
        "--timeout",
        type=_seconds(MAX_TIMEOUT_S, zero=False),
        default=30.0,
        metavar="SECONDS",
        help="a Hub, storage or S3 connection silent this long has failed; it is retried within "
        "--retry-budget (default: %(default)s)",
    )
    add(
        "--skip-bad-records",
        action="store_true",
        help="drop lines that are not valid UTF-8 JSON objects with a string text (each is logged and "
        "counted) instead of stopping the run at the first one",
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
    add(
        "-q",
        "--quiet",
        action="store_true",
        help="print only the parts' locations (one per line) on stdout, only warnings and errors on stderr",
    )
    add(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging on stderr (every request, retry and decision)",
    )
    add("--version", action="version", version=f"aioc4 {__version__}")


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> RunConfig:
    if args.cleanup_local and args.no_cleanup:
        raise UsageError("--cleanup-local and --no-cleanup contradict each other; pass one of them")
    if args.quiet and args.verbose:
        raise UsageError("--quiet and --verbose contradict each other; pass one of them")
    hub_endpoint(environ)  # a malformed HF_ENDPOINT is a usage error now, not 8 retries later
    s3 = parse_s3_path(args.s3_path) if args.s3_path is not None else None
    if args.endpoint_url is not None:
        check_http_url(args.endpoint_url, "--endpoint-url")
    endpoint = s3_endpoint(args.endpoint_url, environ) if s3 is not None else None
    cleanup = args.cleanup_local or (s3 is not None and not args.no_cleanup)
    bulk = _bulk_options(args, environ) if args.num_samples == "all" else None
    if bulk is None:
        given = [
            flag
            for flag, value in (
                ("--num-workers", args.num_workers),
                ("--worker-index", args.worker_index),
                ("--proc-index", args.proc_index),
            )
            if value is not None
        ]
        if given:
            verb = "is" if len(given) == 1 else "are"
            raise UsageError(f"{', '.join(given)} {verb} only for bulk pulls: add --num-samples all")
    if args.cache_dir is not None and args.cache_dir.exists() and not args.cache_dir.is_dir():
        raise UsageError(f"--cache-dir {args.cache_dir} exists and is not a folder")
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
        endpoint_url=endpoint,
        upload_workers=args.upload_workers,
        download_connections=args.download_connections,
        upload_connections=args.upload_connections,
        max_download_rate=args.max_download_rate,
        max_upload_rate=args.max_upload_rate,
        retry_budget_s=args.retry_budget,
        timeout_s=args.timeout,
        skip_bad_records=args.skip_bad_records,
        overwrite=args.overwrite,
        s3_checksum=args.s3_checksum,
        compression=args.compression,
        shards=args.shards,
        procs=1 if bulk else args.procs or default_decode_procs(machine_limits()),
        bulk=bulk,
    )


def _bulk_options(args: argparse.Namespace, environ: Mapping[str, str]) -> BulkOptions:
    """The worker's slot from flags or the scheduler's environment; by default a process per usable CPU."""
    slot = worker_slot(args.num_workers, args.worker_index, environ)
    procs = args.procs or default_procs(machine_limits())
    return BulkOptions(slot.index, slot.count, procs, args.proc_index)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    sys.exit(run_cli(argv))


def run_cli(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    redactor = known_secrets_redactor()
    as_json = "--json" in arguments  # known before parsing, so that a usage error is JSON too
    config: RunConfig | None = None
    try:
        args = _parse(arguments)
        if args.command is not None:
            if arguments[0] != args.command:
                raise UsageError(f"put the command first: aioc4 {args.command} TARGET [flags]")
            return _run_command(args, redactor)
        config = config_from_args(args)
    except Aioc4Error as exc:
        return _failed(exc.exit_code, str(exc), config, as_json=as_json, redactor=redactor)
    redactor = redactor.with_keep(_own_strings(config))
    configure_logging(redactor, quiet=args.quiet, verbose=args.verbose)
    try:
        if args.dry_run:
            return _dry_run(config, as_json=as_json, redactor=redactor)
        if config.bulk is not None and config.bulk.procs > 1 and config.bulk.proc_index is None:
            summary = _execute_processes(arguments, config)
        else:
            summary = _execute(config, _display(config, quiet=args.quiet or config.bulk is not None))
    except Aioc4Error as exc:
        return _failed(exc.exit_code, str(exc), config, as_json=as_json, redactor=redactor)
    except OSError as exc:  # a file or folder the checks could not foresee (permissions, a full disk)
        message = f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}"
        return _failed(EXIT_FAILED, message, config, as_json=as_json, redactor=redactor)
    except KeyboardInterrupt:  # pragma: no cover - SIGINT is handled by the loop; this is a fallback
        message = "interrupted; finished parts are kept; run the same command again to resume"
        return _failed(EXIT_INTERRUPTED, message, config, as_json=as_json, redactor=redactor)
    return _report(summary, config, as_json=as_json, quiet=args.quiet, redactor=redactor)


def _own_strings(config: RunConfig) -> list[str]:
    """The run's own paths and URLs: a secret that happens to occur inside them is not hidden there."""
    own = [str(config.output_dir), str(config.output_dir.absolute())]
    if config.s3 is not None:
        own += [destination_of(config), config.s3.bucket, config.s3.prefix]
    if config.cache_dir is not None:
        own += [str(config.cache_dir), str(config.cache_dir.absolute())]
    return own


def _report(summary: RunSummary, config: RunConfig, *, as_json: bool, quiet: bool, redactor: Redactor) -> int:
    """The end of a run: the summary (or with -q only the parts' locations) and the exit code."""
    error = None
    if summary.failed:
        names = ", ".join(failure.part_name for failure in summary.failed)
        error = f"{len(summary.failed)} part(s) did not reach S3 and are kept locally: {names}"
    code = EXIT_FAILED if error else EXIT_OK
    if config.bulk is not None and config.bulk.proc_index is not None:
        print_json(summary_to_json(summary, config, exit_code=code, error=error), redactor)  # to the parent
        return code
    if as_json:
        print_json(summary_to_json(summary, config, exit_code=code, error=error), redactor)
        if not quiet:
            print(redactor.text(format_summary(summary)), file=sys.stderr, flush=True)
    elif quiet:
        for location in summary.locations:
            print(redactor.text(location), flush=True)
    else:
        print(redactor.text(format_summary(summary)), flush=True)
    append_step_summary(format_step_summary(summary, config, exit_code=code, error=error), redactor)
    if error:
        print_error(error, redactor)
    return code


def _failed(code: int, message: str, config: RunConfig | None, *, as_json: bool, redactor: Redactor) -> int:
    """The one error line on stderr; with --json also the failure object on stdout."""
    if config is not None:
        redactor = redactor.with_keep(_own_strings(config))
    if as_json:
        print_json(failure_to_json(config, code, message), redactor)
    append_step_summary(format_step_summary(None, config, exit_code=code, error=message), redactor)
    print_error(message, redactor)
    return code


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


def _dry_run(config: RunConfig, *, as_json: bool, redactor: Redactor) -> int:
    from .hub import install_hub_client
    from .plan import format_plan, make_plan, plan_to_json

    install_hub_client(config.timeout_s)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        plan = runner.run(make_plan(config))
    if as_json:
        print_json(plan_to_json(plan), redactor)
    else:
        print(redactor.text(format_plan(plan)), flush=True)
    return EXIT_OK


def _execute(config: RunConfig, display: ProgressDisplay | None = None) -> RunSummary:
    from huggingface_hub.utils.tqdm import disable_progress_bars

    from .hub import install_hub_client
    from .jobs import CountJob, job_of
    from .pipeline import StopRequest
    from .runner import destination_for, run

    disable_progress_bars()  # aioc4 reports its own progress
    install_hub_client(config.timeout_s)
    job = job_of(config)
    _tune_malloc(decodes_here=not (isinstance(job, CountJob) and job.decodes_in_processes))

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
            return await run(
                job,
                destination_for(config),
                stop,
                display=display,
                on_decoding_here=lambda: _tune_malloc(decodes_here=True),
            )
        except asyncio.CancelledError:
            if stop.signum:
                raise stop.error(kept=None) from None
            raise

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(main_task())


def _execute_processes(arguments: Sequence[str], config: RunConfig) -> RunSummary:
    """`--procs P`: P child processes share this worker's shards; then one summary over all of them."""
    import dataclasses
    import time

    from .fanout import combined_exit_code, run_children
    from .hub import install_hub_client
    from .jobs import BulkJob, job_of
    from .report import Reading
    from .runner import (
        check_output_dir,
        collect_children,
        destination_for,
        prepare_output_dir,
        remove_if_empty,
        worker_shard_count,
    )

    job = job_of(config)
    assert isinstance(job, BulkJob)
    install_hub_client(config.timeout_s)
    child_arguments = [argument for argument in arguments if argument != "--json"]  # one summary: ours
    started = time.monotonic()
    check_output_dir(config.output_dir)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_check_destination(config))  # a bad bucket is one error line, not one per process
        shards = runner.run(worker_shard_count(job))
        procs = min(job.procs, max(1, shards))
        if procs < job.procs:
            log.info("%d shard(s) to pull: starting %d process(es), not %d", shards, procs, job.procs)
        created_dirs = prepare_output_dir(config.output_dir)  # made here: the parent removes it if empty
        children = runner.run(run_children(child_arguments, procs))
        code = combined_exit_code([child.exit_code for child in children])
        if code != 0:
            remove_if_empty(created_dirs)
            failed = [index for index, child in enumerate(children) if child.exit_code != 0]
            raise ChildrenFailedError(
                f"{len(failed)} of {procs} worker process(es) failed (exit {code}); "
                "finished shards are kept: run the same command again to resume",
                code,
            )
        reports = [child.summary or {} for child in children]
        reading = sum((Reading.from_json(report.get("read", {})) for report in reports), Reading())
        written = sum(int(report.get("written", {}).get("bytes", 0)) for report in reports)
        destination = destination_for(config)
        summary = runner.run(collect_children(job, destination, reading, written))
    if destination.cleanup_local:
        remove_if_empty(created_dirs)
    return dataclasses.replace(summary, elapsed_seconds=time.monotonic() - started)


async def _check_destination(config: RunConfig) -> None:
    from .runner import destination_for

    async with destination_for(config) as destination:
        await destination.check()


def _run_command(args: argparse.Namespace, redactor: Redactor) -> int:
    """`aioc4 verify` and `aioc4 merge`: one folder or S3 prefix, one report."""
    try:
        if not args.target.startswith("s3://") and not Path(args.target).is_dir():
            raise UsageError(f"{args.target} is neither a folder nor an s3:// URL")
        endpoint = s3_endpoint(args.endpoint_url) if args.target.startswith("s3://") else None
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            if args.command == "verify":
                text, ok = runner.run(_verify(args.target, endpoint))
            else:
                text, ok = runner.run(_merge(args, endpoint)), True
    except Aioc4Error as exc:
        print_error(str(exc), redactor)
        return exc.exit_code
    except OSError as exc:
        print_error(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", redactor)
        return EXIT_FAILED
    print(redactor.text(text), flush=True)
    if not ok:
        print_error(f"{args.target} does not match its manifest(s)", redactor)
    return EXIT_OK if ok else EXIT_FAILED


async def _merge(args: argparse.Namespace, endpoint: str | None) -> str:
    from .merge import merge_at

    async with _destination_at(args.target, endpoint) as destination:
        name, manifest = await merge_at(destination, args.split, args.config, args.shards)
        return (
            f"{destination.location(name)}: {len(manifest.parts)} part(s), {manifest.documents:,} documents"
        )


def _destination_at(target: str, endpoint_url: str | None) -> Destination:
    """A folder or an S3 prefix to read manifests from (and save a combined one to), without staging."""
    from .destination import Destination
    from .storage import storage_for

    where = parse_s3_path(target) if target.startswith("s3://") else Path(target)
    return Destination(storage_for(where, endpoint_url=endpoint_url))


async def _verify(target: str, endpoint_url: str | None) -> tuple[str, bool]:
    from .facts import PartFacts
    from .manifest import Manifest
    from .verify import format_report, verify_manifest

    async with _destination_at(target, endpoint_url) as destination:
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


def _tune_malloc(*, decodes_here: bool) -> None:
    """Two glibc settings, both measured:

    - glibc raises its mmap threshold after large frees, so large short-lived buffers end up in
      per-thread heaps that never shrink (measured when uploads held 8 MiB bodies in memory, which
      they no longer do: peak RSS of an S3 run 245 MB instead of 145 MB). A fixed 4 MiB threshold
      maps each such buffer on its own and returns it when freed,
      while the ~1.2 MB decoded blocks keep being recycled from the heap (mapping those costs 20%).
    - glibc gives the top of a heap back to the kernel as soon as 128 KiB of it are free, so every
      decoded block was faulted in afresh: 100k+ page faults for 200k documents. Keeping up to
      `_TRIM_THRESHOLD` free cuts them to about 20k and the run's time by ~10%; the memory stays
      bounded by the pipeline's queues, so peak RSS is unchanged. Only where this process decodes: when
      decode processes do (they have their own settings, `decode_pool.REUSE_FREED_MEMORY`), glibc's
      default gave a 200k-document S3 run's main process ~10 MB less RSS at the same CPU.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)  # this process's own symbols, libc's among them: no `ldconfig` run
        libc.mallopt(_M_MMAP_THRESHOLD, 4 * 1024 * 1024)
        if decodes_here:
            libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return None
    return uvloop.new_event_loop
