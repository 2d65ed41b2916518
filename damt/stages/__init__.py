"""The per-subject stages: the result store and shard jobs (:mod:`damt.stages.store`), their
registry (:mod:`damt.stages.registry`), the image+atlas base (:mod:`damt.stages.image_atlas`) and
the stages themselves: :mod:`damt.stages.stats`, :mod:`damt.stages.radiomics`,
:mod:`damt.stages.cache` (the training cache).
"""
