"""The ``damt`` command line. Each subcommand calls one function of the package.

Heavy imports (torch, PyRadiomics, ...) happen inside the handlers, so ``damt --help`` and the
light commands start quickly.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from damt import __version__
from damt.errors import reported_disk_full
from damt.features import FEATURE_GROUPS
from damt.logs import setup_logging
from damt.paths import normalized_table_file

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
    from damt.discovery.record import write_discovery
    from damt.discovery.workflow import discover_from_config

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
    from damt.config import load_config, validate_config

    config = (
        load_config(args.config)
        if args.config
        else validate_config({"subjects": {"dirs": [{"path": "."}]}})
    )
    print(
        radiomics_to_file(
            args.out,
            config["radiomics"],
            subject_dir=args.subject_dir,
            image=args.image,
            mask=args.mask,
            label=args.label,
            params=args.params,
            subject_id=args.subject_id,
            threads=args.threads,
        )
    )
    return 0


def radiomics_to_file(
    out: str | Path,
    radiomics: Mapping,
    subject_dir: str | Path | None = None,
    image: str | Path | None = None,
    mask: str | Path | None = None,
    label: int | None = None,
    params: str | Path | None = None,
    subject_id: str | None = None,
    threads: int = 1,
) -> str:
    """What ``damt radiomics`` does: one subject's (or one image/mask pair's) features → ``out``.

    ``radiomics`` is the config's ``radiomics`` section (ROIs, volume names, params file);
    ``params`` overrides its params file. Returns a one-line summary; a bad input raises
    ``ValueError`` naming the reason.
    """
    from damt.errors import SubjectError
    from damt.features.radiomics import OUTPUT_FILE, radiomics_for_files, write_row
    from damt.stages.radiomics import RadiomicsStage
    from damt.stages.store import SubjectTask

    out = Path(out)
    try:
        if subject_dir is not None:
            if image or mask or label is not None:
                raise ValueError("give either SUBJECT_DIR or --image/--mask, not both")
            stage = RadiomicsStage(
                params or radiomics["params"],
                radiomics["rois"],
                radiomics["image"],
                radiomics["atlas"],
                radiomics["fastsurfer"],
                threads,
            )
            stage.setup()
            subject = Path(subject_dir)
            task = SubjectTask(subject_id or subject.resolve().name, subject)
            out.parent.mkdir(parents=True, exist_ok=True)
            result = stage.compute(task, out.parent)
            (out.parent / OUTPUT_FILE).replace(out)
            for roi, err in result.info["roi_errors"].items():
                log.warning("ROI %s: %s", roi, err)
            return f"{task.subject_id}: {result.info['n_features']} features -> {out}"
        if not (image and mask and params):
            raise ValueError("--image, --mask and --params are required without SUBJECT_DIR")
        frame = radiomics_for_files(image, mask, params, label, threads, subject_id)
        write_row(out, frame["subject_id"][0], frame.drop(columns="subject_id").iloc[0].to_dict())
        return f"{frame.shape[1] - 1} features -> {out}"
    except SubjectError as exc:
        raise ValueError(f"{exc.reason}: {exc.detail}") from exc


def _cmd_stats(args: argparse.Namespace) -> int:
    """Parse every stats file of SUBJECT_DIR/stats (FreeSurfer 5.x-7.x) into one long table:
    subject_id, source_file, hemisphere, structure, structure_original, measure, value, unit."""
    code, messages = stats_to_file(args.subject_dir, args.out, args.subject_id, args.keep_going)
    for message in messages:
        print(f"damt stats: {message}", file=sys.stderr)
    return code


def stats_to_file(
    subject_dir: str | Path,
    out: str | Path,
    subject_id: str | None = None,
    keep_going: bool = False,
) -> tuple[int, list[str]]:
    """What ``damt stats`` does: parse a subject's ``stats/`` into ``out`` (.parquet/.tsv/.csv).

    Returns the exit status (0 written, 1 some files unparsable and nothing written without
    ``keep_going``, 2 nothing to parse) and the messages for the user.
    """
    from damt.errors import SubjectError
    from damt.freesurfer.stats.long_table import long_table, write_long_table
    from damt.freesurfer.stats.subject import parse_subject_stats

    out = Path(out)
    if out.suffix not in (".parquet", ".tsv", ".csv"):
        raise ValueError(f"output {out} must end in .parquet, .tsv or .csv")
    try:
        subject = parse_subject_stats(subject_dir, subject_id)
    except SubjectError as exc:
        return 2, [f"error: {exc.detail} ({exc.reason})"]
    messages = [f"error: {message}" for message in subject.file_errors().values()]
    if not subject.files:
        return 2, [*messages, f"error: no stats file parsed in {subject.stats_dir}"]
    if subject.errors and not keep_going:
        return 1, [
            *messages,
            f"{len(subject.errors)} file(s) could not be parsed; nothing written "
            "(--keep-going writes the others)",
        ]
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        write_long_table(subject, out)
    else:
        long_table(subject).to_csv(out, sep="\t" if out.suffix == ".tsv" else ",", index=False)
    skipped = f"; skipped {', '.join(subject.skipped)}" if subject.skipped else ""
    messages.append(
        f"{subject.subject_id}: parsed {len(subject.files)} stats file(s) "
        f"(FreeSurfer {subject.fs_version or 'version unknown'}){skipped} → {out}"
    )
    return 0, messages


def _cmd_train(args: argparse.Namespace) -> int:
    """Pretrain the 3D Swin encoder on the training cache. Single process: `damt train ...`;
    several: `torchrun --standalone --nproc_per_node=N $(which damt) train ...`. An existing run
    in --out resumes from its latest checkpoint. SIGTERM or SIGUSR1 (a cluster's preemption or
    time limit) stops it at the next step with a checkpoint, exit status 75; under torchrun only
    when torchrun ignores them (`--signals-to-handle=SIGINT,SIGHUP,SIGQUIT`, started with them
    ignored: the workflow's pretrain job does both), or torchrun kills the trainers first."""
    from damt.config import load_config
    from damt.training.inputs import TrainInputs
    from damt.training.loop import TrainingStopped
    from damt.training.process import STOPPED_EXIT, die_with_parent
    from damt.training.run import CONFIG_SECTIONS, run_pretraining

    # torchrun starts each trainer in a session of its own: die with it, not after it.
    die_with_parent()
    config = load_config(args.config, sections=CONFIG_SECTIONS)
    inputs = TrainInputs.from_arguments(
        args.manifest,
        args.label_table,
        args.tables_dir,
        {group: getattr(args, group) for group in FEATURE_GROUPS},
    )
    try:
        run_pretraining(config, inputs, Path(args.out), cores=args.cores)
    except TrainingStopped as stopped:
        print(f"damt train{_rank_label()}: {stopped}; run it again to resume", file=sys.stderr)
        return STOPPED_EXIT
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    """Frozen-encoder features of subjects, through the run's preprocessing: a Parquet table
    (subject_id, run, weights_sha256, f0 ...) and beside it <out>.failed.tsv, the volumes
    skipped and why. Exit status 1 when no volume could be embedded."""
    import csv

    from damt.downstream import read_card
    from damt.embedding import embed, embedding_inputs
    from damt.io import atomic_path

    card, _ = read_card(args.run)
    inputs = embedding_inputs(card, args.sources)
    frame, failed = embed(args.run, inputs, args.device, args.batch_size)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)
    failed_file = out.with_name(out.name.removesuffix(".parquet") + ".failed.tsv")
    with atomic_path(failed_file) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["subject_id", "reason"])
        writer.writerows(sorted(failed.items()))
    print(f"embedded {len(frame)} volumes into {out}; {len(failed)} skipped ({failed_file})")
    return 0 if len(frame) else 1


def _subcommand(sub, name: str, handler: Handler, summary: str) -> argparse.ArgumentParser:
    """A subcommand's parser; the handler's docstring, where it has one, is its description."""
    parser = sub.add_parser(name, help=summary, description=handler.__doc__ or summary)
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="damt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"damt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log", metavar="FILE", help="also append the log to FILE")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_input_commands(sub)
    _add_model_commands(sub)
    return parser


def _add_input_commands(sub) -> None:
    """The commands on subject data: demo data, discovery, radiomics, stats."""
    p = _subcommand(sub, "demo-data", _cmd_demo_data, "write a synthetic FreeSurfer SUBJECTS_DIR")
    p.add_argument("out", help="output folder (created; existing subjects are overwritten)")
    p.add_argument("--subjects", type=int, default=16, help="number of subjects (default 16)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--prefix", default="sub-", help="subject id prefix (default 'sub-')")

    p = _subcommand(
        sub, "discover", _cmd_discover, "list the subjects a configuration selects, and why not"
    )
    p.add_argument("--config", default="config/config.yaml", help="workflow configuration")
    p.add_argument(
        "--write",
        action="store_true",
        help="also write the discovery files under the results folder",
    )

    p = _subcommand(
        sub, "radiomics", _cmd_radiomics, "PyRadiomics texture features of a subject or image/mask"
    )
    p.add_argument("subject_dir", nargs="?", help="FreeSurfer subject folder (ROIs from config)")
    p.add_argument("-o", "--out", required=True, help="output Parquet (one row)")
    p.add_argument("--image", help="any SimpleITK/nibabel-readable image (.nrrd, .nii.gz, .mgz)")
    p.add_argument("--mask", help="mask or label image on the same grid as --image")
    p.add_argument("--label", type=int, help="mask value of the ROI (default: every non-zero)")
    p.add_argument("--params", help="PyRadiomics params YAML (default: the config's)")
    p.add_argument("--config", help="workflow config (ROIs, image/atlas names, params)")
    p.add_argument("--subject-id", help="subject_id written to the table")
    p.add_argument("--threads", type=int, default=1, help="SimpleITK threads")

    p = _subcommand(
        sub, "stats", _cmd_stats, "parse a subject's FreeSurfer stats/ folder into a long table"
    )
    p.add_argument("subject_dir", help="subject folder (the one holding stats/)")
    p.add_argument("-o", "--out", required=True, help="output file: .parquet, .tsv or .csv")
    p.add_argument("--subject-id", help="subject id (default: the folder name)")
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="write the files that parse even when others are malformed (errors still listed)",
    )


def _add_model_commands(sub) -> None:
    """The commands on the encoder: training it, embedding subjects with it."""
    p = _subcommand(sub, "train", _cmd_train, "pretrain the Swin encoder (under torchrun for DDP)")
    p.add_argument("--config", default="config/config.yaml", help="workflow configuration")
    p.add_argument("--manifest", required=True, help="manifest.parquet")
    p.add_argument("--label-table", required=True, help="label table TSV (index, label, name)")
    p.add_argument(
        "--tables-dir",
        help="folder holding the normalised feature tables: "
        + ", ".join(normalized_table_file(group) for group in FEATURE_GROUPS),
    )
    for group in FEATURE_GROUPS:
        p.add_argument(
            f"--{group.replace('_', '-')}",
            metavar="PARQUET",
            help=f"{normalized_table_file(group)} (overrides --tables-dir)",
        )
    p.add_argument("--out", required=True, help="run folder (weights, metrics, checkpoints)")
    p.add_argument(
        "--cores",
        type=int,
        default=None,
        help="CPU cores for the whole job; each process uses cores / processes-per-node threads",
    )

    p = _subcommand(sub, "embed", _cmd_embed, "pooled encoder features of subjects (Parquet)")
    p.add_argument("run", help="run folder (or its model_card.json)")
    p.add_argument(
        "sources",
        nargs="+",
        help="SUBJECTS_DIR folders, manifest.parquet files and volume files (.mgz, .nii.gz)",
    )
    p.add_argument("-o", "--out", required=True, help="output Parquet")
    p.add_argument("--batch-size", type=int, default=4, help="volumes per forward pass")
    p.add_argument("--device", help="torch device (default: cuda when present, else cpu)")


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
        out = getattr(args, "out", None)
        reported = reported_disk_full(exc, Path(out).parent if out else Path.cwd())
        print(f"damt {args.command}{_rank_label()}: error: {reported}", file=sys.stderr)
        return 2


def _rank_label() -> str:
    """`` (rank R of W on HOST)`` in a process of a torchrun job, so that the job's log names
    the rank (and node) an error came from; empty otherwise."""
    world = os.environ.get("WORLD_SIZE")
    if world is None or world == "1":
        return ""
    return f" (rank {os.environ.get('RANK', '?')} of {world} on {socket.gethostname()})"
