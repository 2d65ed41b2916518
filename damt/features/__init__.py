"""Feature tables: morphometry (FreeSurfer stats), radiomics, and their normalisation."""

# The cohort feature tables, in the order every rule and step lists them.
FEATURE_GROUPS = ("morphometry_global", "morphometry_local", "radiomics")
# The tables each table-regression task of the trainer learns from.
TASK_FEATURE_GROUPS = {
    "morphometry": ("morphometry_global", "morphometry_local"),
    "radiomics": ("radiomics",),
}
