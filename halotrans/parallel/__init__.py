"""Sharding large volumes and ViT attention across GPUs and nodes, on DeepSpeed.

* :mod:`~halotrans.parallel.distributed`: join the process group (torchrun, mpiexec or a world of one)
  and the few collectives the loop needs (``on_rank0``, ``all_reduce_sums``, ``any_rank``);
* :mod:`~halotrans.parallel.groups`: sequence-parallel (SP) and data-parallel process groups
  (DeepSpeed ``parallel_state_sp``, the ``mpu`` of ``deepspeed.initialize``);
* :mod:`~halotrans.parallel.sequence`: Ulysses attention (``DistributedAttention``) in the shared ViT,
  token split / differentiable all-gather;
* :mod:`~halotrans.parallel.halo`: halo exchange and synchronised group norm for slab-sharded convolutions;
* :mod:`~halotrans.parallel.shard`: make a network that declares ``slab_parallel`` (vipr, copra) slab-parallel
  (or any ViT token-parallel), cut batches; ``python -m halotrans infer`` (:mod:`halotrans.eval.infer`) uses it;
* :mod:`~halotrans.parallel.memory`: memory model and choice of levers (``python -m halotrans.parallel.memory``);
* :mod:`~halotrans.parallel.traffic`: bytes sent by the sharding collectives.
"""
