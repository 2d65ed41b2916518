"""FreeSurfer label ids and names (from FreeSurferColorLUT.txt) that the package needs offline.

The tables below let the demo generator and the stats harmonisation work on machines without a
FreeSurfer install; :class:`LabelTable` maps atlas labels to the training cache's classes.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np

# Rows of aseg.stats in FreeSurfer 7 (ASegStatsLUT order): segmentation id → structure name.
ASEG_STATS_ROWS: dict[int, str] = {
    4: "Left-Lateral-Ventricle",
    5: "Left-Inf-Lat-Vent",
    7: "Left-Cerebellum-White-Matter",
    8: "Left-Cerebellum-Cortex",
    10: "Left-Thalamus",
    11: "Left-Caudate",
    12: "Left-Putamen",
    13: "Left-Pallidum",
    14: "3rd-Ventricle",
    15: "4th-Ventricle",
    16: "Brain-Stem",
    17: "Left-Hippocampus",
    18: "Left-Amygdala",
    24: "CSF",
    26: "Left-Accumbens-area",
    28: "Left-VentralDC",
    30: "Left-vessel",
    31: "Left-choroid-plexus",
    43: "Right-Lateral-Ventricle",
    44: "Right-Inf-Lat-Vent",
    46: "Right-Cerebellum-White-Matter",
    47: "Right-Cerebellum-Cortex",
    49: "Right-Thalamus",
    50: "Right-Caudate",
    51: "Right-Putamen",
    52: "Right-Pallidum",
    53: "Right-Hippocampus",
    54: "Right-Amygdala",
    58: "Right-Accumbens-area",
    60: "Right-VentralDC",
    62: "Right-vessel",
    63: "Right-choroid-plexus",
    72: "5th-Ventricle",
    77: "WM-hypointensities",
    78: "Left-WM-hypointensities",
    79: "Right-WM-hypointensities",
    80: "non-WM-hypointensities",
    81: "Left-non-WM-hypointensities",
    82: "Right-non-WM-hypointensities",
    85: "Optic-Chiasm",
    251: "CC_Posterior",
    252: "CC_Mid_Posterior",
    253: "CC_Central",
    254: "CC_Mid_Anterior",
    255: "CC_Anterior",
}

# Desikan-Killiany parcels as FreeSurfer 7 writes them (1004/2004 corpuscallosum is never used).
DESIKAN_PARCELS: dict[int, str] = {
    1: "bankssts",
    2: "caudalanteriorcingulate",
    3: "caudalmiddlefrontal",
    5: "cuneus",
    6: "entorhinal",
    7: "fusiform",
    8: "inferiorparietal",
    9: "inferiortemporal",
    10: "isthmuscingulate",
    11: "lateraloccipital",
    12: "lateralorbitofrontal",
    13: "lingual",
    14: "medialorbitofrontal",
    15: "middletemporal",
    16: "parahippocampal",
    17: "paracentral",
    18: "parsopercularis",
    19: "parsorbitalis",
    20: "parstriangularis",
    21: "pericalcarine",
    22: "postcentral",
    23: "posteriorcingulate",
    24: "precentral",
    25: "precuneus",
    26: "rostralanteriorcingulate",
    27: "rostralmiddlefrontal",
    28: "superiorfrontal",
    29: "superiorparietal",
    30: "superiortemporal",
    31: "supramarginal",
    32: "frontalpole",
    33: "temporalpole",
    34: "transversetemporal",
    35: "insula",
}

HEMI_OFFSET = {"lh": 1000, "rh": 2000}
# aparc+aseg labels of the voxels that ventricles/choroid plexus occupy (BrainSegNotVent).
VENTRICLE_LABELS = (4, 5, 14, 15, 31, 43, 44, 63, 72)


class LabelTable:
    """Atlas label → class index mapping of the training cache (``index, label, name`` TSV).

    ``classes[i]`` is the class of ``labels[i]`` (by default ``i``). Several labels may share a
    class (merged classes); ``names[k]`` is then their names joined by ``+``.
    """

    def __init__(self, labels: list[int], names: list[str], classes: list[int] | None = None):
        classes = list(range(len(labels))) if classes is None else [int(c) for c in classes]
        if not (len(labels) == len(names) == len(classes)):
            raise ValueError("label table: labels, names and classes differ in length")
        if not labels or labels[0] != 0 or classes[0] != 0:
            raise ValueError("label table: row 0 must map label 0 (background) to class 0")
        if len(set(labels)) != len(labels):
            raise ValueError("label table: a label is listed twice")
        if set(classes) != set(range(max(classes) + 1)):
            raise ValueError("label table: class indices must run 0..K-1 with none skipped")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = np.asarray(classes, dtype=np.int64)
        members: dict[int, list[str]] = {}
        for cls, name in zip(classes, names, strict=True):
            members.setdefault(cls, []).append(name)
        self.names = ["+".join(members[k]) for k in range(len(members))]

    @property
    def n_classes(self) -> int:
        return len(self.names)

    def remap(self, atlas: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
        """Class indices of an atlas, and ``{unknown label: voxel count}`` (mapped to 0)."""
        atlas = np.asarray(atlas)
        if atlas.dtype.kind == "f":
            atlas = np.rint(atlas)
        atlas = atlas.astype(np.int64)
        if atlas.size and atlas.min() < 0:
            raise ValueError("atlas holds negative labels")
        size = int(max(atlas.max(initial=0), self.labels.max())) + 1
        lut = np.full(size, -1, dtype=np.int64)
        lut[self.labels] = self.classes
        classes = lut[atlas]
        unknown_mask = classes < 0
        unknown: dict[int, int] = {}
        if unknown_mask.any():
            ids, counts = np.unique(atlas[unknown_mask], return_counts=True)
            unknown = {int(i): int(c) for i, c in zip(ids, counts, strict=True)}
            classes[unknown_mask] = 0
        dtype = np.uint8 if self.n_classes <= 256 else np.uint16
        return classes.astype(dtype), unknown


def read_label_table(path: str | Path) -> LabelTable:
    """Read a label table: TSV with header ``index label name``; ``#`` lines are comments.

    ``index`` runs 0..K-1 in order; consecutive rows may repeat an index to merge their labels
    into one class.
    """
    rows = []
    with open(path, encoding="utf-8") as fh:
        lines = [ln.rstrip("\n") for ln in fh if ln.strip() and not ln.startswith("#")]
    if not lines or lines[0].split("\t")[:3] != ["index", "label", "name"]:
        raise ValueError(f"{path}: expected a header line 'index<TAB>label<TAB>name'")
    for lineno, line in enumerate(lines[1:], 2):
        fields = line.split("\t")
        try:
            rows.append((int(fields[0]), int(fields[1]), fields[2]))
        except (IndexError, ValueError) as exc:
            raise ValueError(f"{path}: bad row {lineno} {line!r}") from exc
    indices = [r[0] for r in rows]
    steps = {b - a for a, b in pairwise(indices)}
    if not indices or indices[0] != 0 or not steps <= {0, 1}:
        raise ValueError(
            f"{path}: indices must run 0..K-1 in order (repeat an index on consecutive rows to "
            "merge labels into one class)"
        )
    return LabelTable([r[1] for r in rows], [r[2] for r in rows], indices)
