"""What generate and serve-bench share when they run: the sampling flags checked, the device, and
the models and tokenizer read from --checkpoint and --draft-checkpoint."""

from __future__ import annotations


def sampling(args) -> dict:
    """The sampling flags, checked (finite numbers in range, --greedy alone) before any model is loaded."""
    from moe.cli.common import DEFAULT_TEMPERATURE
    from moe.serving.sampling import SamplingParams

    if args.greedy:
        given = [f"--{k.replace('_', '-')} {v}" for k in ("temperature", "top_k", "top_p") if (v := getattr(args, k))]
        if given:  # (None is not given; 0 and 0.0 are not either: greedy already)
            raise ValueError(f"--greedy contradicts {', '.join(given)}: greedy always takes the most likely token")
    temperature = DEFAULT_TEMPERATURE if args.temperature is None else args.temperature
    settings = {"temperature": temperature, "top_k": args.top_k, "top_p": args.top_p, "greedy": args.greedy}
    try:
        SamplingParams(**settings)
    except ValueError as e:
        raise ValueError(f"sampling flags: {e}") from None
    return settings


def device(args) -> str:
    from moe import devices

    return str(devices.resolve(args.device))


def load(path, args):
    """The checkpoint at `path` on --device, through --expert-backend if given."""
    from moe.training import load_model

    overrides = {"expert_backend": args.expert_backend} if args.expert_backend else {}
    return load_model(path, device(args), **overrides)


def tokenizer(checkpoint, draft_checkpoint=None):
    """The checkpoint's own tokenizer; a draft model must share it."""
    from moe.data import tokenizer as tokenizers
    from moe.training.run_dir import resolve

    tok = tokenizers.load(resolve(checkpoint))
    if draft_checkpoint is not None:
        draft = tokenizers.load(resolve(draft_checkpoint))
        if draft.fingerprint != tok.fingerprint:
            raise ValueError(
                f"--draft-checkpoint {draft_checkpoint} uses the {draft.describe()} tokenizer, "
                f"--checkpoint {checkpoint} the {tok.describe()} one: speculative decoding needs one"
            )
    return tok


def distributed(args) -> bool:
    """Whether the command runs one engine over torchrun's processes (a layout, or more than one)."""
    import os

    return args.tp * args.pp * args.ep > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1


def engine(args, draft, **kw):
    """The engine the command runs on: one process's over the --checkpoint, or, with a layout, rank
    0's DistributedEngine over every rank's shard (None on the other ranks, once rank 0 has stopped
    them). `kw`: Engine's keywords. A layout is checked first by the command (check_layout_flags),
    before it loads tokenizers or binds a port."""
    if not distributed(args):
        from moe.serving import Engine

        return Engine(load(args.checkpoint, args), draft=draft, **kw)
    import torch.distributed as dist

    from moe.layout import Layout
    from moe.parallel.serving import DistributedEngine, follow, load_shard

    overrides = {"expert_backend": args.expert_backend} if args.expert_backend else {}
    layout = Layout(tp=args.tp, pp=args.pp, ep=args.ep)
    shard = load_shard(args.checkpoint, layout, args.device, args.dist_timeout, **overrides)
    if dist.get_rank() != 0:
        follow(shard)
        return None
    return DistributedEngine(shard, microbatches=args.microbatches, draft=draft, **kw)


def is_main() -> bool:
    """Rank 0 (or the one process): the one that loads a draft, prints and serves."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def check_layout_flags(args) -> None:
    """The layout against the checkpoint's model and torchrun's world, before any process group."""
    import os

    from moe.layout import Layout
    from moe.parallel.serving import check_layout
    from moe.training.checkpoint import read_config

    cfg, _ = read_config(args.checkpoint)
    layout = Layout(tp=args.tp, pp=args.pp, ep=args.ep)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        check_layout(cfg, layout, world)
    except ValueError as e:
        hint = (
            f"; launch it with torchrun --nproc-per-node {layout.world_size} -m moe ..."
            if world != layout.world_size
            else ""
        )
        raise ValueError(f"{e}{hint}") from None


def finish(args) -> None:
    """Leave the process group, if the command joined one."""
    if distributed(args):
        from moe.parallel.trainer import close_process_group

        close_process_group()
