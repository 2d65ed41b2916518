"""Self-supervised pretraining of the DAMT encoder: data, views, losses, loop, checkpoints, export.

Entry point: :func:`damt.training.run.run_pretraining` (what ``damt train`` runs on every rank).
"""
