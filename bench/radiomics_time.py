"""Seconds per subject of the radiomics stage on FreeSurfer's bert with the default settings.

    python bench/radiomics_time.py [--repeats 3]

Times the stage's per-subject work (reading both volumes, building the ROI masks, PyRadiomics
on each ROI) with the extractor built once, as in a shard job; also each ROI alone.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from damt.config import validate_config
from damt.stages.radiomics import RadiomicsStage
from damt.stages.store import SubjectTask

REPO = Path(__file__).resolve().parents[1]
BERT = REPO.parent / "shared" / "data" / "freesurfer" / "subjects" / "bert"


def seconds(stage: RadiomicsStage, repeats: int) -> float:
    """Median wall time of one subject."""
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            stage.compute(SubjectTask("bert", BERT), Path(tmp))
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rc = validate_config({"subjects": {"dirs": [{"path": "."}]}})["radiomics"]
    params = REPO / rc["params"]
    volumes = (rc["image"], rc["atlas"], rc["fastsurfer"])
    for name, labels in rc["rois"].items():
        stage = RadiomicsStage(params, {name: labels}, *volumes, threads=1)
        stage.setup()
        print(f"ROI {name:15s} {seconds(stage, args.repeats):6.2f} s")
    stage = RadiomicsStage(params, rc["rois"], *volumes, threads=1)
    stage.setup()
    total = seconds(stage, args.repeats)
    print(f"all {len(rc['rois'])} ROIs ({75 * len(rc['rois'])} features): {total:.2f} s")
    print(f"radiomics_s_per_subject={total:.2f}")


if __name__ == "__main__":
    main()
