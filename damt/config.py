"""The one configuration loader: YAML file → schema-validated dict with defaults filled in.

The Snakefile validates the same schema with ``snakemake.utils.validate``; ``damt`` commands that
take ``--config`` go through :func:`load_config`, so both see identical defaults and errors.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(str(files("damt") / "resources" / "config.schema.yaml"))


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the offending key."""


def load_schema() -> dict:
    """Return the JSON schema of the workflow configuration."""
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _extend_with_default(validator_class):
    """Validator that fills ``default`` values while validating (jsonschema FAQ recipe)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _extend_with_default(jsonschema.Draft202012Validator)


# Keys renamed since a release: the old name is refused with a message that names the new one
# (a silently ignored or generically refused key would hide what changed).
RENAMED_KEYS = {("pretrain", "subjects"): "pretrain.subset_size"}


def refuse_renamed_keys(config: Mapping, source: str = "config") -> None:
    """Raise :class:`ConfigError` for every key of :data:`RENAMED_KEYS` that ``config`` uses."""
    used = []
    for (section, key), new in RENAMED_KEYS.items():
        if isinstance(config.get(section), Mapping) and key in config[section]:
            used.append(f"  {section}.{key}: renamed to {new} (same meaning); rename it")
    if used:
        raise ConfigError(f"invalid configuration in {source}:\n" + "\n".join(used))


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = []
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else f".{p}")
    return "".join(parts).lstrip(".") or "<top level>"


def validate_config(
    config: dict, source: str = "config", sections: tuple[str, ...] | None = None
) -> dict:
    """Validate ``config`` in place (filling defaults) and return it.

    With ``sections``, only those top-level sections are validated and filled; the others may be
    absent (``damt train`` reads a file holding the ``pretrain`` section alone).
    Raises :class:`ConfigError` listing every violation as ``key.path: message`` (a renamed key
    first: :func:`refuse_renamed_keys`).
    """
    refuse_renamed_keys(config, source)
    schema = load_schema()
    if sections is not None:
        schema = {
            **schema,
            "properties": {k: schema["properties"][k] for k in sections},
            "required": [],
            "additionalProperties": True,
        }
    validator = _DefaultFillingValidator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {_key_path(e)}: {e.message}" for e in errors]
        raise ConfigError(f"invalid configuration in {source}:\n" + "\n".join(lines))
    return config


def schema_defaults(section: str) -> dict:
    """The schema's defaults of one top-level section (a new dict on every call)."""
    return validate_config({}, sections=(section,))[section]


def with_schema_defaults(section: str, stored: Mapping[str, Any]) -> dict:
    """``stored`` (a section as a run recorded it, maybe before newer keys existed) with the
    schema's defaults under it, not validated: a finished run stays readable."""
    return deep_update(schema_defaults(section), stored)


def deep_update(base: dict, overrides: Mapping[str, Any]) -> dict:
    """Recursively merge ``overrides`` into ``base`` (dicts merge, everything else replaces)."""
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def load_config(
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    sections: tuple[str, ...] | None = None,
) -> dict:
    """Read a YAML configuration file, apply ``overrides`` and validate it (``sections``: see
    :func:`validate_config`)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"configuration file {path} must hold a mapping at the top level")
    if overrides:
        deep_update(config, overrides)
    return validate_config(config, source=str(path), sections=sections)
