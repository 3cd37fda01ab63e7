"""generate: sample text from a checkpoint through the KV cache (moe.serving.Engine, one sequence)."""

from __future__ import annotations

import sys

from moe.cli import serving
from moe.cli.common import (
    EXIT_OK,
    POSITIVE_INT,
    SEED,
    add_draft,
    add_runtime,
    add_sampling,
    add_serving_layout,
    check_device,
)


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help="sample text from a checkpoint through the KV cache")
    g.add_argument("--checkpoint", required=True, help="run directory (uses its latest step) or a step directory")
    g.add_argument("--prompt", help="text to continue (default: a newline; with --image, nothing: read the image)")
    g.add_argument("--max-new-tokens", type=POSITIVE_INT, default=200, help="tokens to generate")
    add_sampling(g, top_p_help="nucleus sampling: smallest set with this much probability")
    g.add_argument("--seed", type=SEED, default=None, help="sampling seed (default: a random one)")
    add_runtime(
        g,
        expert_backend_help="auto, torch or triton (default: the checkpoint's)",
        compile_help="torch.compile the model's forward (the first steps compile)",
    )
    g.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="FILE",
        help="a vision checkpoint: an image to "
        "read (its placeholder goes before --prompt; repeat for several), e.g. from `render`",
    )
    add_draft(
        g,
        checkpoint_help="speculative decoding with this draft model (same vocabulary); also reports its "
        "acceptance and tokens per target forward (speedups: python -m bench.serving)",
    )
    add_serving_layout(g)
    g.set_defaults(func=run)


def _images(paths: list[str], cfg) -> list:
    """--image files, sized for the model's encoder (moe/vision/images.py); each one's placeholder
    goes before the prompt."""
    if not paths:
        return []
    if cfg.vision is None:
        raise ValueError(
            f"--image: the checkpoint's model {cfg.name!r} reads no images (its config has no [vision] table)"
        )
    from moe.vision.images import load_image

    return [load_image(p, cfg.vision) for p in paths]


def run(args) -> int:
    """The text, then one line of statistics: tokens, time, tokens/s (and the draft's acceptance)."""
    import random
    import time

    from moe.serving import Request

    sampling = serving.sampling(args)
    check_device(args)
    if serving.distributed(args):
        serving.check_layout_flags(args)
    tok = serving.tokenizer(args.checkpoint, args.draft_checkpoint)
    draft = serving.load(args.draft_checkpoint, args) if args.draft_checkpoint and serving.is_main() else None
    engine = serving.engine(
        args,
        draft,
        max_batch=1,  # pages for one full sequence
        draft_tokens=args.draft_tokens,
        compile=args.compile,
    )
    if engine is None:  # another rank's part is done
        serving.finish(args)
        return EXIT_OK
    cfg = engine.model.cfg
    images = _images(args.image, cfg)
    placeholders = [cfg.vision.image_token] * len(images) if images else []
    text = args.prompt if args.prompt is not None else ("" if images else "\n")
    try:
        try:
            prompt = placeholders + (tok.encode_prompt(text) if text else [])
        except UnicodeEncodeError as e:  # bytes the shell could not decode reach Python as lone surrogates
            raise ValueError(
                f"--prompt: not valid UTF-8 text (characters {e.start}-{e.end - 1} are undecodable bytes)"
            ) from None
        if not prompt:
            raise ValueError("--prompt is empty: give at least one character to continue (or an --image)")
        seed = args.seed if args.seed is not None else random.randrange(2**31)
        request = Request(prompt, args.max_new_tokens, sampling=sampling, seed=seed, images=images)
        t = time.perf_counter()
        result = engine.run([request])[0]
        seconds = time.perf_counter() - t
    finally:
        engine.close()
        serving.finish(args)
    if isinstance(result, Exception):
        raise result
    print("<image>" * len(images) + tok.decode(prompt[len(images) :] + result.tokens))
    print(f"\n[{_stats(result, seconds, engine, args.draft_tokens if draft is not None else None)}]", file=sys.stderr)
    return EXIT_OK


def _stats(result, seconds: float, engine, draft_tokens: int | None) -> str:
    n = len(result.tokens)
    stats = (
        f"{n} new tokens ({result.finish_reason}) in {seconds:.2f} s, {n / seconds:.1f} tokens/s, "
        f"{result.target_forwards} target forwards"
    )
    if engine.compile_s is not None:
        stats += f" ({engine.compile_s:.2f} s of it in forwards that compiled)"
    if draft_tokens is not None:
        stats += (
            f"; {draft_tokens} draft tokens: acceptance {result.draft_accepted}/{result.draft_proposed} = "
            f"{result.draft_accepted / max(1, result.draft_proposed):.3f}, "
            f"{n / result.target_forwards:.2f} tokens per target forward"
        )
    return stats
