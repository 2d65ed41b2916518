"""Cohort feature tables built from the per-subject stage results."""
