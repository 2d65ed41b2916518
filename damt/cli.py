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
from damt.logs import setup_logging

log = logging.getLogger("damt")

Handler = Callable[[argparse.Namespace], int]


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


def _cmd_radiomics(args: argparse.Namespace) -> int:
    from pathlib import Path

    from damt.config import load_config, validate_config
    from damt.features.radiomics import RadiomicsStage, radiomics_for_files, write_row
    from damt.shards import SubjectError, SubjectTask

    try:
        if args.subject_dir is not None:
            if args.image or args.mask or args.label is not None:
                raise ValueError("give either SUBJECT_DIR or --image/--mask, not both")
            config = (
                load_config(args.config)
                if args.config
                else validate_config({"subjects": {"dirs": [{"path": "."}]}})
            )
            rc = config["radiomics"]
            stage = RadiomicsStage(
                args.params or rc["params"], rc["rois"], rc["image"], rc["atlas"], args.threads
            )
            stage.setup()
            subject = Path(args.subject_dir)
            task = SubjectTask(args.subject_id or subject.resolve().name, subject)
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            result = stage.compute(task, out.parent)
            (out.parent / "radiomics.parquet").replace(out)
            for roi, err in result.info["roi_errors"].items():
                log.warning("ROI %s: %s", roi, err)
            print(f"{task.subject_id}: {result.info['n_features']} features -> {out}")
        else:
            if not (args.image and args.mask and args.params):
                raise ValueError("--image, --mask and --params are required without SUBJECT_DIR")
            frame = radiomics_for_files(
                args.image, args.mask, args.params, args.label, args.threads, args.subject_id
            )
            write_row(
                Path(args.out),
                frame["subject_id"][0],
                frame.drop(columns="subject_id").iloc[0].to_dict(),
            )
            print(f"{frame.shape[1] - 1} features -> {args.out}")
    except SubjectError as exc:
        raise ValueError(f"{exc.reason}: {exc.detail}") from exc
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from pathlib import Path

    from damt.freesurfer.stats import (
        StatsUnavailableError,
        long_table,
        parse_subject_stats,
        write_long_table,
    )

    out = Path(args.out)
    if out.suffix not in (".parquet", ".tsv", ".csv"):
        raise ValueError(f"output {out} must end in .parquet, .tsv or .csv")
    try:
        subject = parse_subject_stats(args.subject_dir, args.subject_id)
    except StatsUnavailableError as exc:
        print(f"damt stats: error: {exc.detail} ({exc.reason})", file=sys.stderr)
        return 2
    for message in subject.file_errors().values():
        print(f"damt stats: error: {message}", file=sys.stderr)
    if not subject.files:
        print(f"damt stats: error: no stats file parsed in {subject.stats_dir}", file=sys.stderr)
        return 2
    if subject.errors and not args.keep_going:
        print(
            f"damt stats: {len(subject.errors)} file(s) could not be parsed; nothing written "
            "(--keep-going writes the others)",
            file=sys.stderr,
        )
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        write_long_table(subject, out)
    else:
        frame = long_table(subject)
        frame.to_csv(out, sep="\t" if out.suffix == ".tsv" else ",", index=False)
    skipped = f"; skipped {', '.join(subject.skipped)}" if subject.skipped else ""
    print(
        f"{subject.subject_id}: parsed {len(subject.files)} stats file(s) "
        f"(FreeSurfer {subject.fs_version or 'version unknown'}){skipped} → {out}",
        file=sys.stderr,
    )
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

    p = sub.add_parser("radiomics", help="PyRadiomics texture features of a subject or image/mask")
    p.add_argument("subject_dir", nargs="?", help="FreeSurfer subject folder (ROIs from config)")
    p.add_argument("-o", "--out", required=True, help="output Parquet (one row)")
    p.add_argument("--image", help="any SimpleITK/nibabel-readable image (.nrrd, .nii.gz, .mgz)")
    p.add_argument("--mask", help="mask or label image on the same grid as --image")
    p.add_argument("--label", type=int, help="mask value of the ROI (default: every non-zero)")
    p.add_argument("--params", help="PyRadiomics params YAML (default: the config's)")
    p.add_argument("--config", help="workflow config (ROIs, image/atlas names, params)")
    p.add_argument("--subject-id", help="subject_id written to the table")
    p.add_argument("--threads", type=int, default=1, help="SimpleITK threads")
    p.set_defaults(handler=_cmd_radiomics)

    p = sub.add_parser(
        "stats",
        help="parse a subject's FreeSurfer stats/ folder into a long table",
        description="Parse every stats file of SUBJECT_DIR/stats (FreeSurfer 5.x-7.x) into one "
        "long table: subject_id, source_file, hemisphere, structure, structure_original, "
        "measure, value, unit.",
    )
    p.add_argument("subject_dir", help="subject folder (the one holding stats/)")
    p.add_argument("-o", "--out", required=True, help="output file: .parquet, .tsv or .csv")
    p.add_argument("--subject-id", help="subject id (default: the folder name)")
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="write the files that parse even when others are malformed (errors still listed)",
    )
    p.set_defaults(handler=_cmd_stats)
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
