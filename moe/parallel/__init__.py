"""The parallel wing: a Layout (moe/layout.py) applied to a finished model on torch.distributed.

    parallelize      device mesh and groups; tp/ep as DTensor shards, ParallelExperts installed; FSDP2;
                     gradient averaging and global clipping
    collectives      differentiable all-to-all and Megatron's f/g
    expert_parallel  ParallelExperts: the MoE layer's experts over ep and tp ranks
    zero             AdamW over the FSDP2 shards, keyed by parameter name for checkpoints
    simulate         a layout at full scale on the meta device in a fake process group (figures --simulate)
    pipeline         pipeline stages under the full model's names, and the schedule
    checkpoint       DCP checkpoints that load into any layout
    trainer          DistributedTrainer (one rank's step) and train_distributed (the one training loop)
    launch           train_in_layout: one process or the distributed trainer, whichever a run needs

Nothing in the model, training or serving wings imports this package.
"""
