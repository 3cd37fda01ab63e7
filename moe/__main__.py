"""Command line: python -m moe {train, generate, figures} --help"""

from __future__ import annotations

import argparse
import sys

from moe.config import EXPERT_BACKENDS  # imports no torch, so --help stays fast


def _overrides(pairs: list[str]) -> dict:
    from moe.config import parse_value

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"override {pair!r} is not key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = parse_value(value.strip())
    return out


def cmd_figures(args) -> None:
    from moe.config import load_config
    from moe.figures import print_figures

    print_figures(load_config(args.config, **_overrides(args.set)))


def cmd_train(args) -> None:
    from moe.config import load_config, load_train_config, split_overrides

    model_over, train_over = split_overrides(_overrides(args.set))
    for flag in ("lr", "batch_size", "seq_len", "max_steps", "time_budget_s", "seed"):
        if getattr(args, flag) is not None:
            train_over[flag] = getattr(args, flag)
    if args.expert_backend:
        model_over["expert_backend"] = args.expert_backend
    model_cfg = load_config(args.config, **model_over)
    if args.dense:
        model_cfg = model_cfg.dense_twin()
    train_cfg = load_train_config(args.config, **train_over)
    from moe.train import train

    out = args.out or f"runs/{model_cfg.name}"
    print(f"training {model_cfg.name} -> {out}")
    train(model_cfg, train_cfg, out, resume=args.resume, overwrite=args.overwrite, device=args.device,
          progress=None if not args.no_progress else False)


def cmd_generate(args) -> None:
    import torch

    from moe import checkpoint
    from moe.data import decode, encode
    from moe.generate import generate

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    overrides = {"expert_backend": args.expert_backend} if args.expert_backend else {}
    model = checkpoint.load_model(args.checkpoint, device, **overrides)
    prompt = encode(args.prompt)
    new = generate(model, prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, greedy=args.greedy, seed=args.seed)
    print(decode(prompt + new))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m moe", description="A Mixture-of-Experts transformer, tiny to GPT-4 shape.")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("figures", help="parameters, FLOPs and memory a config implies, beside the leaked GPT-4 figures")
    f.add_argument("--config", default="gpt4", help="preset name (configs/NAME.toml) or a .toml path")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a model field")
    f.set_defaults(func=cmd_figures)

    t = sub.add_parser("train", help="train on the bundled Shakespeare corpus (byte-level)")
    t.add_argument("--config", default="tiny", help="preset name or .toml path")
    t.add_argument("--out", help="run directory for checkpoints and plots (default runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue exactly from the latest checkpoint in --out")
    t.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds checkpoints (deletes them)")
    t.add_argument("--dense", action="store_true",
                   help="train the dense twin: one expert, top-1, top_k x d_ff wide (same active parameters)")
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--batch-size", dest="batch_size", type=int, help="sequences per step")
    t.add_argument("--seq-len", dest="seq_len", type=int, help="tokens per sequence")
    t.add_argument("--max-steps", dest="max_steps", type=int, help="steps to train (the end of the cosine schedule)")
    t.add_argument("--time-budget", dest="time_budget_s", type=float,
                   help="seconds of training: fit max_steps to it after measuring the step time (0: off)")
    t.add_argument("--seed", type=int, help="random seed (weights, data order)")
    t.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    t.add_argument("--expert-backend", choices=EXPERT_BACKENDS, help="expert matmuls: auto (Triton on CUDA, PyTorch "
                   "elsewhere), torch or triton (default: the config's expert_backend)")
    t.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any model or [train] field, e.g. --set n_layers=2 --set warmup_steps=10")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="sample text from a checkpoint through the KV cache")
    g.add_argument("--checkpoint", required=True, help="run directory (uses its latest step) or a step directory")
    g.add_argument("--prompt", default="\n", help="text to continue")
    g.add_argument("--max-new-tokens", type=int, default=200, help="bytes to generate")
    g.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (0: greedy)")
    g.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with this much probability")
    g.add_argument("--greedy", action="store_true", help="always take the most likely token")
    g.add_argument("--seed", type=int, default=None, help="sampling seed")
    g.add_argument("--device", help="cpu or cuda")
    g.add_argument("--expert-backend", choices=EXPERT_BACKENDS, help="auto, torch or triton (default: the checkpoint's)")
    g.set_defaults(func=cmd_generate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from moe.train import TrainingError

        if isinstance(e, TrainingError):
            print(f"error: {e}", file=sys.stderr)
            return 3
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
