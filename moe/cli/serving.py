"""What generate and serve-bench share when they run: the sampling flags checked, the device, and
the models and tokenizer read from --checkpoint and --draft-checkpoint."""

from __future__ import annotations


def sampling(args) -> dict:
    """The sampling flags, checked (finite numbers in range) before any model is loaded."""
    from moe.serving.sampling import SamplingParams

    settings = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "greedy": args.greedy}
    SamplingParams(**settings)
    return settings


def device(args) -> str:
    import torch

    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


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
