"""What the commands share: exit codes, argparse types, --set, and the flags several commands
take (sampling, draft model, device and kernels). Imports no torch, so --help stays fast."""

from __future__ import annotations

import argparse

from moe.config import EXPERT_BACKENDS

EXIT_OK, EXIT_BAD_INPUT, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 2, 3, 130


def _positive(kind):
    """An argparse type: a finite number > 0 of `kind` (int or float), else a message naming the value."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not (0 < value < float("inf")):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


POSITIVE_INT, POSITIVE_FLOAT = _positive(int), _positive(float)


def add_set(parser, help: str = "override a model field") -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def overrides(pairs: list[str]) -> dict:
    """--set's KEY=VALUE pairs as a dict, each value parsed as in a config file."""
    from moe.config import parse_value

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"override {pair!r} is not key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = parse_value(value.strip())
    return out


def _seed(text: str) -> int:
    """An argparse type: a seed, an integer in [0, 2**64)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**64), got {text}")
    return value


SEED = _seed
DEFAULT_TEMPERATURE = 0.8


def add_sampling(parser, top_p_help: str = "nucleus sampling") -> None:
    """--temperature, --top-k, --top-p, --greedy: moe.serving.SamplingParams (checked by serving.sampling)."""
    parser.add_argument(
        "--temperature", type=float, help=f"softmax temperature (0: greedy; default {DEFAULT_TEMPERATURE})"
    )
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help=top_p_help)
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")


def add_draft(parser, checkpoint_help: str = "speculative decoding with this draft model") -> None:
    parser.add_argument("--draft-checkpoint", help=checkpoint_help)
    parser.add_argument("--draft-tokens", type=POSITIVE_INT, default=4, help="tokens the draft proposes per step")


def check_device(args) -> None:
    """--device, checked against this machine before anything is read or created."""
    if args.device is not None:
        from moe import devices

        try:
            devices.resolve(args.device)
        except ValueError as e:
            raise ValueError(f"--device: {e}") from None


def add_runtime(
    parser, compile_help: str, expert_backend_help: str = "auto, torch or triton", device_help: str = "cpu or cuda"
) -> None:
    """--device, --expert-backend, --compile: where the model runs and through which kernels."""
    parser.add_argument("--device", help=device_help)
    parser.add_argument("--expert-backend", choices=EXPERT_BACKENDS, help=expert_backend_help)
    parser.add_argument("--compile", action="store_true", help=compile_help)


def add_serving_layout(parser) -> None:
    """--tp, --pp, --ep, --microbatches: one engine over torchrun's processes (moe/parallel/serving.py)."""
    par = parser.add_argument_group(
        "layout (launch with torchrun --nproc-per-node tp x pp x ep; rank 0 serves, the others compute)"
    )
    par.add_argument("--tp", type=POSITIVE_INT, default=1, help="tensor parallel: split query heads and expert d_ff")
    par.add_argument("--pp", type=POSITIVE_INT, default=1, help="pipeline parallel: split the layers into stages")
    par.add_argument("--ep", type=POSITIVE_INT, default=1, help="expert parallel: split the experts and the rows")
    par.add_argument(
        "--microbatches", type=POSITIVE_INT, default=None, help="pipeline microbatches per step (default: pp)"
    )
    par.add_argument(
        "--dist-timeout", type=POSITIVE_FLOAT, default=60.0, help="seconds a rank waits for a peer before failing"
    )
