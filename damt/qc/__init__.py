"""Quality control: the checks (:mod:`damt.qc.checks`), the cohort steps that write the checks
table and the manifest (:mod:`damt.qc.steps`), and the QC page's figures (:mod:`damt.qc.report`).
"""
