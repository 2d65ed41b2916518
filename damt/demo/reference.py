"""The reference anatomy of the synthetic subjects, after FreeSurfer's sample subject ``bert``:
head size, regional cortical thickness, parcel directions, deep structures and T1 intensities
(data tables)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Cerebrum ellipsoid semi-axes (mm: R, A, S) of a reference adult male head.
CEREBRUM_AXES = np.array([66.0, 84.0, 56.0])
# Region (mm, relative to the brain centre) that holds every structure; the rest stays empty.
BOX_LO = np.array([-80.0, -100.0, -82.0])
BOX_HI = np.array([80.0, 96.0, 72.0])

# Regional mean cortical thickness (mm) of the Desikan parcels, after bert's lh.aparc.stats.
BASE_THICKNESS = {
    "bankssts": 2.80,
    "caudalanteriorcingulate": 2.50,
    "caudalmiddlefrontal": 2.78,
    "cuneus": 1.75,
    "entorhinal": 3.07,
    "fusiform": 2.63,
    "inferiorparietal": 2.65,
    "inferiortemporal": 2.89,
    "isthmuscingulate": 2.02,
    "lateraloccipital": 2.25,
    "lateralorbitofrontal": 2.82,
    "lingual": 1.78,
    "medialorbitofrontal": 2.57,
    "middletemporal": 3.06,
    "parahippocampal": 2.40,
    "paracentral": 2.50,
    "parsopercularis": 2.93,
    "parsorbitalis": 2.93,
    "parstriangularis": 2.70,
    "pericalcarine": 1.48,
    "postcentral": 2.21,
    "posteriorcingulate": 2.41,
    "precentral": 2.94,
    "precuneus": 2.36,
    "rostralanteriorcingulate": 2.96,
    "rostralmiddlefrontal": 2.51,
    "superiorfrontal": 2.99,
    "superiorparietal": 2.39,
    "superiortemporal": 2.88,
    "supramarginal": 2.73,
    "frontalpole": 2.82,
    "temporalpole": 3.78,
    "transversetemporal": 2.38,
    "insula": 3.09,
}
# Parcel seed directions in a hemisphere frame (lateral, anterior, superior); medial is -lateral.
PARCEL_SEEDS = {
    "superiorfrontal": (-0.3, 0.45, 0.85),
    "rostralmiddlefrontal": (0.6, 0.75, 0.3),
    "caudalmiddlefrontal": (0.55, 0.3, 0.75),
    "parsopercularis": (0.85, 0.35, 0.05),
    "parstriangularis": (0.75, 0.6, 0.0),
    "parsorbitalis": (0.6, 0.7, -0.3),
    "lateralorbitofrontal": (0.4, 0.7, -0.55),
    "medialorbitofrontal": (-0.5, 0.7, -0.4),
    "frontalpole": (0.0, 1.0, 0.0),
    "precentral": (0.6, 0.05, 0.8),
    "postcentral": (0.6, -0.2, 0.75),
    "paracentral": (-0.7, -0.1, 0.7),
    "superiorparietal": (0.2, -0.6, 0.75),
    "inferiorparietal": (0.65, -0.65, 0.35),
    "supramarginal": (0.85, -0.35, 0.35),
    "precuneus": (-0.75, -0.55, 0.35),
    "superiortemporal": (0.95, 0.05, -0.25),
    "middletemporal": (0.85, -0.3, -0.45),
    "inferiortemporal": (0.55, -0.35, -0.75),
    "bankssts": (0.95, -0.3, -0.05),
    "transversetemporal": (0.9, -0.1, 0.05),
    "temporalpole": (0.5, 0.6, -0.6),
    "entorhinal": (-0.1, 0.35, -0.9),
    "parahippocampal": (-0.35, -0.15, -0.9),
    "fusiform": (0.15, -0.4, -0.9),
    "insula": (0.7, 0.25, -0.1),
    "lateraloccipital": (0.55, -0.85, -0.1),
    "lingual": (-0.55, -0.75, -0.35),
    "cuneus": (-0.6, -0.8, 0.1),
    "pericalcarine": (-0.7, -0.7, -0.05),
    "caudalanteriorcingulate": (-0.95, 0.3, 0.15),
    "rostralanteriorcingulate": (-0.95, 0.45, -0.05),
    "posteriorcingulate": (-0.95, -0.05, 0.3),
    "isthmuscingulate": (-0.9, -0.4, 0.05),
}


@dataclass(frozen=True)
class Blob:
    """An ellipsoidal structure: (left label, right label or None for midline), centre, axes."""

    left: int
    right: int | None
    centre: tuple[float, float, float]  # left-hemisphere centre (R < 0); mirrored for the right
    axes: tuple[float, float, float]
    group: str  # which phenotype scaling applies: subcortical | hippocampus | ventricle | fixed


# Painted in this order; later structures overwrite earlier ones. Positions and sizes follow
# bert's centroids and voxel counts (semi-axis ≈ 2.24 × the spatial standard deviation).
DEEP_STRUCTURES = (
    Blob(11, 50, (-11.0, 27.0, -6.0), (5.0, 16.0, 9.0), "subcortical"),  # caudate
    Blob(12, 51, (-22.0, 19.0, -16.0), (7.5, 17.0, 9.5), "subcortical"),  # putamen
    Blob(13, 52, (-17.5, 14.0, -18.0), (5.5, 11.0, 8.5), "subcortical"),  # pallidum
    Blob(10, 49, (-9.5, -1.0, -12.0), (10.0, 18.0, 11.0), "subcortical"),  # thalamus
    Blob(28, 60, (-8.6, 5.0, -27.0), (8.0, 10.0, 15.0), "subcortical"),  # ventral DC
    Blob(17, 53, (-23.5, -1.0, -31.5), (7.0, 22.0, 7.0), "hippocampus"),
    Blob(18, 54, (-19.6, 17.5, -33.7), (7.3, 7.3, 7.3), "subcortical"),  # amygdala
    Blob(26, 58, (-6.2, 31.0, -21.0), (4.8, 4.8, 4.8), "subcortical"),  # accumbens
    Blob(5, 44, (-28.0, 5.0, -28.0), (2.0, 8.0, 3.0), "ventricle"),  # inferior lateral ventricle
    Blob(4, 43, (-13.0, 2.0, -2.0), (6.0, 24.0, 8.0), "ventricle"),  # lateral ventricle body
    Blob(4, 43, (-18.0, -26.0, -6.0), (5.0, 12.0, 6.0), "ventricle"),  # posterior horn
    Blob(31, 63, (-16.0, -20.0, -4.0), (4.0, 8.0, 4.5), "fixed"),  # choroid plexus
    Blob(30, 62, (-20.0, 18.0, -22.0), (1.5, 1.5, 2.0), "fixed"),  # vessel
    Blob(14, None, (0.0, 10.0, -21.0), (1.8, 11.0, 12.0), "ventricle"),  # 3rd ventricle
    Blob(251, None, (0.0, -18.0, 0.0), (8.0, 6.0, 4.0), "fixed"),  # corpus callosum ...
    Blob(252, None, (0.0, -6.0, 6.0), (8.0, 6.0, 4.0), "fixed"),
    Blob(253, None, (0.0, 6.0, 8.0), (8.0, 6.0, 4.0), "fixed"),
    Blob(254, None, (0.0, 18.0, 6.0), (8.0, 6.0, 4.0), "fixed"),
    Blob(255, None, (0.0, 28.0, 0.0), (8.0, 6.0, 4.0), "fixed"),
    Blob(85, None, (0.0, 30.0, -30.0), (7.0, 3.0, 2.5), "fixed"),  # optic chiasm
    Blob(8, 47, (-21.5, -41.0, -54.0), (28.0, 28.0, 23.0), "subcortical"),  # cerebellar cortex
    Blob(7, 46, (-15.0, -35.0, -50.0), (15.0, 14.0, 11.0), "subcortical"),  # cerebellar WM
    Blob(16, None, (0.0, -10.0, -47.0), (13.0, 15.0, 30.0), "subcortical"),  # brain stem
    Blob(15, None, (0.0, -26.0, -51.0), (8.0, 6.0, 8.0), "ventricle"),  # 4th ventricle
    Blob(24, None, (0.0, 8.0, -42.0), (8.0, 4.0, 8.0), "fixed"),  # CSF
)

# Median T1 intensity per label (bert's brainmask.mgz, FreeSurfer-normalised so that WM ≈ 110).
T1_MEANS = {
    2: 108.0,
    41: 108.0,
    4: 34.0,
    43: 34.0,
    5: 40.0,
    44: 40.0,
    7: 104.0,
    46: 104.0,
    8: 84.0,
    47: 84.0,
    10: 100.0,
    49: 100.0,
    11: 82.0,
    50: 82.0,
    12: 94.0,
    51: 94.0,
    13: 105.0,
    52: 105.0,
    14: 40.0,
    15: 38.0,
    16: 100.0,
    17: 80.0,
    53: 80.0,
    18: 78.0,
    54: 78.0,
    24: 45.0,
    26: 80.0,
    58: 80.0,
    28: 97.0,
    60: 97.0,
    30: 62.0,
    62: 62.0,
    31: 55.0,
    63: 55.0,
    77: 78.0,
    85: 88.0,
    251: 104.0,
    252: 104.0,
    253: 104.0,
    254: 104.0,
    255: 104.0,
}
CORTEX_T1 = 78.0
