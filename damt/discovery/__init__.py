"""Subject discovery: which folders of the configured SUBJECTS_DIRs are subjects, and which are not.

The Snakefile calls :func:`damt.discovery.workflow.discover_for_workflow` at parse time; the files
it writes (``discovery/subjects.tsv``, ``discovery/report.tsv`` and one membership file per shard)
are inputs of the rules, rewritten only when their content changes, so that Snakemake reruns
exactly the jobs whose subjects changed.

Modules, from the bottom up: ``ids`` (legal ids, shards, participants, the subjects list),
``scan`` (one folder classified, the whole search), ``record`` (the discovery's files) and
``workflow`` (discovery from a validated configuration, as the Snakefile needs it).
"""
