"""Feature tables: morphometry (FreeSurfer stats), radiomics, and their normalisation."""
