# Shared set-up of the workflow: demo cohort, subject discovery, shard lists and targets.
# Functions only (rules live in the other .smk files); the logic itself is in `damt`.
import logging

from damt.demo.cohort import ensure_demo_cohort
from damt.discovery import discover_for_workflow, discovery_paths, shard_file
from damt.qc import FEATURE_GROUPS

_handler = logging.StreamHandler()
_handler.setFormatter(logging.Formatter("damt: %(message)s"))
logging.getLogger("damt").addHandler(_handler)
logging.getLogger("damt").setLevel(logging.INFO)

OUT = config["outdir"]


wildcard_constraints:
    shard=r"[A-Za-z0-9._-]+",


if workflow.is_main_process:
    ensure_demo_cohort(config)

# Subjects are found at parse time: the discovery files are rewritten only when the cohort
# changes, and every aggregate rule takes them as input, so a new or removed subject reruns
# the cohort stages (and only the new subject's per-subject jobs).
DISCOVERY = discover_for_workflow(config, main_process=workflow.is_main_process)
SHARDS = list(DISCOVERY.shards())
DISCOVERY_FILES = discovery_paths(OUT)


def shard_members(wildcards):
    """Membership file of the shard a per-subject job processes."""
    return shard_file(OUT, wildcards.shard)


def all_targets():
    """Final outputs of the workflow."""
    return [
        f"{OUT}/manifest.parquet",
        expand(f"{OUT}/features/{{group}}.z.parquet", group=FEATURE_GROUPS),
    ]
