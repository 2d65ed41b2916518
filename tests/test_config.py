"""Configuration loading and validation: defaults, and errors that name the offending key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from damt.config import ConfigError, load_config, validate_config
from tests.conftest import REPO, run_snakemake, workflow_config


def test_default_config_is_valid_and_filled():
    cfg = load_config(REPO / "config" / "config.yaml")
    assert cfg["outdir"] == "results"
    assert cfg["sharding"]["n_shards"] == 0
    assert cfg["subjects"]["required_files"] == ["mri/brainmask.mgz", "mri/aparc+aseg.mgz"]
    assert cfg["subjects"]["list"] is None


def test_minimal_config_gets_schema_defaults():
    cfg = validate_config({"subjects": {"dirs": [{"path": "x"}]}})
    assert cfg["subjects"]["exclude"] == ["fsaverage*"]
    assert cfg["subjects"]["dirs"][0]["optional"] is False
    assert cfg["demo"] == {
        "enabled": False,
        "out": "results/demo/subjects",
        "subjects": 16,
        "seed": 0,
    }


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"subjects": {"dirs": [{"path": "x"}]}, "shardng": {}}, "'shardng' was unexpected"),
        ({"subjects": {"dirs": [{"path": "x"}], "exlude": []}}, "subjects: Additional"),
        ({"subjects": {"dirs": [{"path": 5}]}}, "subjects.dirs[0].path: 5 is not of type"),
        ({"subjects": {"dirs": []}}, "subjects.dirs: [] should be non-empty"),
        (
            {"subjects": {"dirs": [{"path": "x"}]}, "sharding": {"n_shards": -1}},
            "sharding.n_shards: -1 is less than the minimum",
        ),
        ({}, "subjects: 'dirs' is a required property"),
    ],
)
def test_invalid_config_names_the_key(config, expected):
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert expected in str(err.value)


def test_a_renamed_key_is_refused_naming_the_new_one():
    config = {"subjects": {"dirs": [{"path": "x"}]}, "pretrain": {"subjects": 100}}
    with pytest.raises(ConfigError) as err:
        validate_config(config, source="my.yaml")
    assert "in my.yaml" in str(err.value)
    assert "pretrain.subjects: renamed to pretrain.subset_size" in str(err.value)
    validate_config({**config, "pretrain": {"subset_size": 100}})


def test_every_error_is_listed():
    with pytest.raises(ConfigError) as err:
        validate_config({"subjects": {"dirs": [{"path": 1}]}, "sharding": {"n_shards": "a"}})
    msg = str(err.value)
    assert "subjects.dirs[0].path" in msg and "sharding.n_shards" in msg


def test_unreadable_and_malformed_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("subjects: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(scalar)


def test_overrides_merge_deeply(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"subjects": {"dirs": [{"path": "a"}]}}))
    cfg = load_config(path, {"sharding": {"n_shards": 8}, "subjects": {"exclude": []}})
    assert cfg["sharding"]["n_shards"] == 8
    assert cfg["subjects"]["exclude"] == []
    assert cfg["subjects"]["dirs"] == [{"path": "a", "optional": False}]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sections", "words"),
    [
        # The schema (Snakefile's validate).
        ({"sharding": {"n_shards": 0, "n_shardz": 3}}, ["n_shardz"]),
        # A renamed key (refuse_renamed_keys, before the schema).
        ({"pretrain": {"subjects": 3}}, ["pretrain.subjects: renamed to pretrain.subset_size"]),
        # check_severity (issue 18, case 7): a misspelt code, with the known ones.
        (
            {"qc": {"severity": {"qc:surface_hole": "fail"}}},
            ["unknown issue code(s) 'qc:surface_hole'", "known codes: ", "qc:surface_holes"],
        ),
        # check_run_settings (issue 18, case 1): the trainer's cross-key checks.
        ({"pretrain": {"epochs": 1, "warmup_epochs": 1}}, ["warmup_epochs (1) must be smaller"]),
        # plan_runs, and check_run_settings of each planned run (named).
        ({"experiments": {"runs": {"fast": {"epoch": 1}}}}, ["'fast'", "unknown pretrain key"]),
        ({"experiments": {"runs": {"cold": {"warmup_epochs": 9}}}}, ["'cold-s0'", "warmup"]),
        # check_data_scaling against the discovered subjects (two of the four are not held out).
        ({"experiments": {"data_scaling": [3]}}, ["'data-3-s0'", "3 but only 2"]),
        # An experiment plan is scored by the probe.
        (
            {"experiments": {"ablation": ["mim"]}, "probe": {"phenotypes": None}},
            ["probe.phenotypes"],
        ),
    ],
)
def test_the_workflow_refuses_bad_settings_at_parse_time(
    tmp_path: Path, demo_cohort: Path, sections, words
):
    """Each parse-time check of rules/common.smk stops a dry run before anything is written;
    the checks themselves are unit tests (test_launch, test_experiments, test_qc)."""
    sections = {"probe": {"phenotypes": str(demo_cohort / "phenotypes.tsv")}, **sections}
    override = workflow_config(tmp_path, [{"path": str(demo_cohort)}], **sections)
    proc = run_snakemake("-n", "--configfile", str(override), check=False)
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0, out[-3000:]
    for word in words:
        assert word in out, out[-3000:]
    if "data_scaling" not in str(sections):  # the only check that needs the discovered cohort
        assert not (tmp_path / "results").exists()  # refused before anything was written


def test_a_recorded_pretrain_section_gets_the_schema_defaults_of_keys_added_since():
    """A checkpoint's config from before ``contrastive`` and ``ema`` existed (and with the
    subset size under its first name) reads with today's defaults under it; its own values
    win, and nothing is refused: a finished run stays exportable."""
    from damt.config import schema_defaults, with_schema_defaults
    from damt.training.settings import ContrastiveSettings, EmaSettings

    stored = {"balancing": "equal", "epochs": 3, "subjects": 10, "augment": {"noise": {"prob": 1}}}
    filled = with_schema_defaults("pretrain", stored)
    defaults = schema_defaults("pretrain")
    assert filled["contrastive"] == defaults["contrastive"] and filled["ema"] == defaults["ema"]
    assert (filled["balancing"], filled["epochs"], filled["subjects"]) == ("equal", 3, 10)
    assert filled["augment"]["noise"] == {**defaults["augment"]["noise"], "prob": 1}
    assert ContrastiveSettings.from_pretrain(filled).method == defaults["contrastive"]["method"]
    assert EmaSettings.from_pretrain(filled).enabled is defaults["ema"]["enabled"]
    assert "contrastive" not in stored  # the recorded section itself is left as it was
