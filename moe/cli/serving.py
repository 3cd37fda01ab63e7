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
