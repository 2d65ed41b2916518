"""Probing: how much a frozen representation says about a phenotype (docs/contracts.md, "Probe").

Protocol. Every feature set is scored on the same subjects of a target. The probes are fitted on
the pretraining subjects (manifest ``split == train``) and scored on the held-out subjects, which
pretraining never saw (protocol ``holdout``); a target with fewer than ``probe.min_holdout``
held-out subjects (or one class among them) falls back to nested cross-validation over all
probed subjects (protocol ``nested_cv``: out-of-fold predictions). Two probes: ``linear`` (ridge
regression / L2 logistic regression, the penalty chosen by an inner search on the training
subjects over a grid scaled to the feature count) and ``knn`` (k nearest neighbours on cosine
similarity, k chosen by the same inner search). Missing feature values are imputed with the
training subjects' median and features standardised, both fitted on the training subjects only.

Scores (MAE and R², or balanced accuracy and ROC AUC) are computed on the test subjects' pooled
predictions, with a percentile bootstrap 95 % interval over test subjects. A row that averages
several fits (random-init seeds, label-fraction draws) averages the metric over them inside each
bootstrap resample. Label efficiency refits on nested random subsets of the training subjects.

Modules, from the bottom up: ``settings`` (vocabulary, ``ProbeSettings``, ``ProbeError``),
``phenotypes`` (the phenotype table), ``estimators`` (one fit: numpy and scikit-learn only, also
used by the k-NN monitor during pretraining), ``metrics`` (scores, bootstrap intervals, label
subsets), ``targets`` (every feature set and probe of one target, the ``probe.tsv`` rows),
``features`` (frozen-encoder features on one grid), ``figures`` and ``job`` (the probe rule).
"""
