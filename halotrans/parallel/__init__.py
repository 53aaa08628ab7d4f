"""Sharding large volumes and ViT attention across GPUs and nodes, on DeepSpeed.

* :mod:`~halotrans.parallel.groups`: sequence-parallel (SP) and data-parallel process groups
  (DeepSpeed ``parallel_state_sp``, the ``mpu`` of ``deepspeed.initialize``);
* :mod:`~halotrans.parallel.sequence`: Ulysses attention (``DistributedAttention``) in the shared ViT,
  token split / differentiable all-gather;
* :mod:`~halotrans.parallel.halo`: halo exchange and synchronised group norm for slab-sharded convolutions;
* :mod:`~halotrans.parallel.shard`: make vipr / copra slab-parallel (or any ViT token-parallel), cut batches;
* :mod:`~halotrans.parallel.sharded_inference`: ``python -m halotrans infer`` on every rank of a job;
* :mod:`~halotrans.parallel.memory`: memory model and choice of levers (``python -m halotrans.parallel.memory``);
* :mod:`~halotrans.parallel.traffic`: bytes sent by the sharding collectives.
"""
