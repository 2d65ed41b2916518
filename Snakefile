# DAMT: FreeSurfer SUBJECTS_DIR -> feature tables -> QC manifest -> pretrained 3D Swin encoder.
# Rules live in rules/*.smk and call functions of the `damt` package; see README.md.
from snakemake.utils import min_version, validate

from damt.config import refuse_renamed_keys

min_version("9.0")


configfile: "config/config.yaml"


refuse_renamed_keys(config)
validate(config, "damt/resources/config.schema.yaml")


include: "rules/common.smk"
include: "rules/stats.smk"
include: "rules/radiomics.smk"
include: "rules/cache.smk"
include: "rules/qc.smk"
include: "rules/pretrain.smk"
include: "rules/probe.smk"
include: "rules/finetune.smk"
include: "rules/experiments.smk"


rule all:
    default_target: True
    input:
        all_targets(),
