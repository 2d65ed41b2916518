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


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from damt.config import load_config
    from damt.training.data import TABLE_FILES
    from damt.training.loop import TrainInputs, run_pretraining

    config = load_config(args.config)
    tables = {}
    for name, filename in TABLE_FILES.items():
        explicit = getattr(args, name)
        if explicit:
            tables[name] = Path(explicit)
        elif args.tables_dir:
            tables[name] = Path(args.tables_dir) / filename
    inputs = TrainInputs(Path(args.manifest), Path(args.label_table), tables)
    run_pretraining(config, inputs, Path(args.out), cores=args.cores)
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

    p = sub.add_parser(
        "train",
        help="pretrain the Swin encoder (run under torchrun for DDP)",
        description="Pretrain the 3D Swin encoder on the training cache. Single process: "
        "`damt train ...`; several: `torchrun --standalone --nproc_per_node=N $(which damt) "
        "train ...`. An existing run in --out resumes from its latest checkpoint.",
    )
    p.add_argument("--config", default="config/config.yaml", help="workflow configuration")
    p.add_argument("--manifest", required=True, help="manifest.parquet")
    p.add_argument("--label-table", required=True, help="label table TSV (index, label, name)")
    p.add_argument(
        "--tables-dir",
        help="folder holding morphometry_global.z.parquet, morphometry_local.z.parquet and "
        "radiomics.z.parquet",
    )
    for name, filename in (
        ("morphometry-global", "morphometry_global.z.parquet"),
        ("morphometry-local", "morphometry_local.z.parquet"),
        ("radiomics", "radiomics.z.parquet"),
    ):
        p.add_argument(f"--{name}", metavar="PARQUET", help=f"{filename} (overrides --tables-dir)")
    p.add_argument("--out", required=True, help="run folder (weights, metrics, checkpoints)")
    p.add_argument(
        "--cores",
        type=int,
        default=None,
        help="CPU cores for the whole job; each process uses cores / processes-per-node threads",
    )
    p.set_defaults(handler=_cmd_train)
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
