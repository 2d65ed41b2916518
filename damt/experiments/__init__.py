"""Experiment plans: many pretraining runs (ablations, data and model scaling, seeds) from one
config section (:mod:`damt.experiments.plan`) and one summary of their probes
(:mod:`damt.experiments.summary`).
"""
