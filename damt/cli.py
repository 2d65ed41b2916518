"""The ``damt`` command line. Each subcommand calls one function of the package.

Heavy imports (torch, PyRadiomics, ...) happen inside the handlers, so ``damt --help`` and the
light commands start quickly.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from damt import __version__

log = logging.getLogger("damt")

Handler = Callable[[argparse.Namespace], int]


def setup_logging(verbose: bool = False, log_file: str | None = None) -> None:
    """Log to stderr (and to ``log_file`` when given) with timestamps."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, mode="a", encoding="utf-8"))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from damt.demo.cohort import generate_cohort

    phenotypes = generate_cohort(
        args.out, args.subjects, args.seed, workers=args.workers, prefix=args.prefix
    )
    print(f"wrote {len(phenotypes)} synthetic subjects and phenotypes.tsv to {args.out}")
    return 0


def _cmd_discover(args: argparse.Namespace) -> int:
    from damt.config import load_config
    from damt.discovery import discover_from_config, write_discovery

    config = load_config(args.config)
    discovery = discover_from_config(config)
    for notice in discovery.notices:
        log.info("%s", notice)
    if args.write:
        write_discovery(discovery, config["outdir"])
    for f in discovery.report:
        print(f"{f.subject_id}\t{f.status}\t{f.reason}\t{f.detail}")
    flagged = sum(f.status == "flagged" for f in discovery.report)
    print(f"# {len(discovery.subjects)} subjects, {flagged} flagged", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="damt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"damt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log", metavar="FILE", help="also append the log to FILE")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo-data", help="write a synthetic FreeSurfer SUBJECTS_DIR")
    p.add_argument("out", help="output folder (created; existing subjects are overwritten)")
    p.add_argument("--subjects", type=int, default=16, help="number of subjects (default 16)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--prefix", default="sub-", help="subject id prefix (default 'sub-')")
    p.set_defaults(handler=_cmd_demo_data)

    p = sub.add_parser("discover", help="list the subjects a configuration selects, and why not")
    p.add_argument("--config", default="config/config.yaml", help="workflow configuration")
    p.add_argument(
        "--write",
        action="store_true",
        help="also write the discovery files under the results folder",
    )
    p.set_defaults(handler=_cmd_discover)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``damt`` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.log)
    handler: Handler = args.handler
    try:
        return handler(args)
    except (ValueError, OSError, RuntimeError) as exc:
        # Expected failures (bad input, bad config) get one clear line, not a traceback.
        log.debug("traceback", exc_info=True)
        print(f"damt {args.command}: error: {exc}", file=sys.stderr)
        return 2
