"""Fine-tuning: what the pretrained weights buy on labelled tasks, against the same network
trained from scratch (docs/finetune.md).

Protocol. The subjects are the probe's: training subjects (manifest ``split == train``) are
fine-tuned on, held-out ones, which pretraining never saw, are scored. A unit fine-tunes one task
from one initialisation (``pretrained``: the run's encoder; ``scratch``: the same network at a
random initialisation, seeded by the unit's seed) on the first ``count`` labelled training
subjects of a seed's hash order (nested subsets, stable as subjects are added), picks its best
epoch on an inner validation split of them, and predicts every held-out subject. Phenotypes
(regression, classification) train the encoder with a pooled linear head on whole volumes;
segmentation trains MONAI's ``SwinUNETR`` on crops of the cache's FreeSurfer labels and scores
the sliding-window prediction of each held-out volume by Dice per structure. Summaries average
the seeds inside each bootstrap resample of the held-out subjects; the difference pretrained −
scratch pairs seeds and resamples.

Modules, from the bottom up: ``settings`` (vocabulary, ``FinetuneSettings``, ``FinetuneError``),
``plan`` (subsets, inner split, units), ``data`` (subjects and their volumes), ``models`` (the
networks, built through :mod:`damt.downstream`, and their learning rates), ``train`` (one unit),
``summary`` (scores, intervals, paired differences), ``figures`` and ``job`` (the finetune rule).
"""
