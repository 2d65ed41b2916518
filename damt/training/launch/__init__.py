"""What the workflow's pretrain job does: decide whether to (re)train, then launch ``torchrun``.

A run folder holds ``checkpoints/`` and ``signature.json``: what the checkpoints were trained on
(the training subjects, the ``pretrain`` settings that shape the model, the feature columns and
the label table). Operational settings (``OPERATIONAL_KEYS``: threads, data loader workers,
logging, which checkpoints are kept, the policy itself) are not part of it. The
``pretrain.retrain`` policy compares it with the current inputs:

- a run that stopped before its last epoch resumes, unless its signature changed (then it
  could not be resumed meaningfully and starts afresh; under ``never`` it resumes, but refuses
  with an explanation when the feature columns or the label table changed);
- ``cohort``: a finished run with the same signature is kept (its weights are exported again,
  no training); a changed signature trains afresh;
- ``always``: a finished run trains afresh whenever the job runs;
- ``never``: a finished run is kept whatever changed.

A kept run is exported by ``damt train`` from its checkpoint alone (the network it trained and
the record of its training), in one process.

Superseded checkpoints, metrics and TensorBoard files move to ``superseded/<time>/`` instead of
being deleted. Training runs as ``python -m torch.distributed.run --standalone --nnodes=1
--nproc_per_node=N -m damt train ...`` (torchrun with this interpreter): one process per GPU
(NCCL), or ``pretrain.cpu_processes`` processes with gloo when ``pretrain.gpus`` is 0.

With ``pretrain.nodes`` > 1 the job runs in a SLURM allocation of that many nodes: this launcher
(once, on the allocation's first node: it plans, moves and signs as above) starts one torchrun
per node with ``srun``, all of them meeting in a c10d rendezvous whose store this launcher
hosts (:func:`host_rendezvous_store`, :func:`multinode_command`). The world size is nodes ×
processes per node. The node count is part of the run signature (a run interrupted on N nodes
trains afresh on M under ``cohort``): the global batch, the learning rate and the sampler's
split of every epoch follow the world size, so the checkpoint's optimizer state and position in
the epoch belong to N.

Modules: ``checks`` (every check of a run's settings, and :class:`LaunchError`), ``signature``
(the run signature and the retrain policy), ``resources`` (the pretrain rule's Snakemake
resources), ``commands`` (torchrun, and srun over several nodes) and ``job`` (:func:`launch`).
"""
