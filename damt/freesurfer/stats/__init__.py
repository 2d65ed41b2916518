"""FreeSurfer's ``stats/*.stats`` files (5.x, 6.x and 7.x) and the long table made from them.

Modules, from the bottom up: ``model`` (a parsed file: measures, table, header), ``parser`` (the
one parser of the text), ``subject`` (a subject's ``stats/`` folder and its FreeSurfer version)
and ``long_table`` (the subject's long table, written as Parquet).
"""
