"""Every path under the workflow's results folder (``outdir``), spelled once.

The rules build their inputs and outputs from :class:`ResultPaths` (a wildcard such as
``"{shard}"`` passed as an argument stays in the pattern), and the package builds the same paths
with the same methods, so no file name under ``results/`` is written twice. The layout is
documented in ``docs/contracts.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

# Files inside a pretraining run folder that the rules name as outputs.
ENCODER_FILE = "encoder.safetensors"
# pretrain.ema: the EMA encoder, beside the plain one.
ENCODER_EMA_FILE = "encoder_ema.safetensors"
MODEL_CARD_FILE = "model_card.json"
# The encoder in the layout of MONAI's self-supervised Swin weights (damt.model.monai_ssl).
MONAI_SSL_FILE = "model_swinvit.pt"
# Files of a subject's training cache (written by damt.stages.cache, read by the trainer, the
# probe and the QC report).
IMAGE_FILE, ATLAS_FILE = "image.npy", "atlas.npy"


def normalized_table_file(group: str) -> str:
    """File name of a feature group's normalised table (what the trainer reads)."""
    return f"{group}.z.parquet"


@dataclass(frozen=True)
class ResultPaths:
    """Paths of the files under ``outdir``; every method returns a ``str``."""

    outdir: str

    def _at(self, *parts: str) -> str:
        return "/".join((str(self.outdir).rstrip("/"), *parts))

    # --- discovery -------------------------------------------------------------------------
    def discovery_subjects(self) -> str:
        """The discovered cohort (one row per usable subject)."""
        return self._at("discovery", "subjects.tsv")

    def discovery_report(self) -> str:
        """Every folder that is not a usable subject, with its reason."""
        return self._at("discovery", "report.tsv")

    def shards_dir(self) -> str:
        """Folder of the shard membership files."""
        return self._at("discovery", "shards")

    def shard_members(self, shard: str) -> str:
        """Membership file of one shard."""
        return self._at("discovery", "shards", f"{shard}.tsv")

    # --- per-subject stages ----------------------------------------------------------------
    def stage_summary(self, stage: str, shard: str) -> str:
        """Summary of one shard job of a per-subject stage (stats, radiomics, cache)."""
        return self._at(stage, "shards", f"{shard}.tsv")

    def subject_stage(self, subject_id: str, stage: str) -> str:
        """Folder of one subject's stored result of one stage (``result.json`` and files)."""
        return self._at("subjects", subject_id, stage)

    # --- feature tables and QC -------------------------------------------------------------
    def feature_table(self, group: str) -> str:
        """A feature group's cohort table (raw values)."""
        return self._at("features", f"{group}.parquet")

    def normalized_table(self, group: str) -> str:
        """A feature group's normalised table."""
        return self._at("features", normalized_table_file(group))

    def norm_stats(self, group: str) -> str:
        """The statistics a feature group's normalisation was fitted with."""
        return self._at("features", f"{group}.norm.json")

    def qc_checks(self) -> str:
        """Per-subject checks with a preliminary status (before outliers)."""
        return self._at("qc", "checks.parquet")

    def qc_page(self, name: str) -> str:
        """A file of the QC page: ``failures.tsv``, ``distributions.png``, ``montage.png``."""
        return self._at("qc", name)

    def manifest(self) -> str:
        """The manifest: who trains, and why not."""
        return self._at("manifest.parquet")

    # --- pretraining and probe -------------------------------------------------------------
    def run_dir(self, run: str) -> str:
        """Folder of one pretraining run (checkpoints, metrics, exports)."""
        return self._at("pretrain", run)

    def run_file(self, run: str, name: str) -> str:
        """A file of a pretraining run folder."""
        return f"{self.run_dir(run)}/{name}"

    def probe(self, run: str, name: str) -> str:
        """A probe output of one run: ``probe.json``, ``probe.tsv`` and the figures
        (``probe.png``, ``label_efficiency.png``, ``embedding.png``)."""
        return self._at("probe", run, name)

    def finetune(self, run: str, name: str) -> str:
        """A fine-tuning output of one run: ``finetune.tsv``, ``summary.tsv``,
        ``label_curves.png``, and ``units/`` (each unit's result, kept across runs)."""
        return self._at("finetune", run, name)

    def experiments(self, name: str) -> str:
        """An output of the experiment summary: ``summary.tsv``, ``runs.tsv`` and the figures."""
        return self._at("experiments", name)

    # --- logs and benchmarks ---------------------------------------------------------------
    def log(self, name: str) -> str:
        """Log file of a job (``name`` may hold a wildcard, e.g. ``cache/{shard}``)."""
        return self._at("logs", f"{name}.log")

    def benchmark(self, name: str) -> str:
        """Benchmark file of a job."""
        return self._at("benchmarks", f"{name}.tsv")
