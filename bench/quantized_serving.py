"""Weight-only quantized serving measured on trained checkpoints: quality, bytes and decode speed.

    python -m bench.quantized_serving --checkpoint runs/tiny [--draft runs/tiny-draft]

For each of fp32 (the checkpoint as trained), bf16 (every weight cast), and the experts quantized to
int8, fp8 (e4m3; on a CPU its values are exact in float32, so the PyTorch path computes with them
directly) and int4 (groups of 128), with attention, router and head left as trained; and int8 with
the attention projections and the output head quantized too ("int8 + dense"):
  - validation loss (nats per byte): 64 fixed windows of the held-out text, as long as the
    checkpoint's training sequences (positions past those were never trained);
  - the bytes the expert weights occupy, and all weights (values and scales);
  - decode tokens/s through the serving engine at batch 1 and 8 (32-token prompts, 64 new tokens,
    greedy; the median of --reps runs);
  - greedy agreement with the fp32 model over 500 held-out prompts of 32 bytes: the share of
    prompts whose next token is the same, and the share of 16-token continuations identical to fp32's.
The draft model gets the loss and bytes. Writes bench/results/<device>/quantized.{json,md}.
"""

from __future__ import annotations

import copy
import statistics
import time

import numpy as np
import torch

from bench import harness
from moe.data import TokenDataset, get_batch
from moe.model.quantized import expert_bytes, quantize_model, weight_bytes
from moe.serving import Engine, Request
from moe.training import load_model, read_config

VARIANTS = ("fp32", "bf16", "int8", "fp8", "int4", "int8 + dense")


def variant(model, name):
    if name == "fp32":
        return model
    if name == "bf16":
        return copy.deepcopy(model).to(torch.bfloat16)
    scheme, _, dense = name.partition(" + ")
    return quantize_model(model, scheme, dense=bool(dense))


@torch.no_grad()
def val_loss(model, val, seq_len: int) -> float:
    x, y = get_batch(val, 64, seq_len, torch.Generator().manual_seed(0))
    losses = [model(x[i : i + 16], targets=y[i : i + 16]).loss.item() for i in range(0, 64, 16)]
    return sum(losses) / len(losses)


def decode_tokens_per_s(model, prompts, batch: int, reps: int) -> float:
    times = []
    for _ in range(reps):
        engine = Engine(model, max_batch=batch)
        reqs = [Request(p, 64, {"greedy": True}) for p in prompts[:batch]]
        t = time.perf_counter()
        engine.run(reqs)
        times.append(time.perf_counter() - t)
    return 64 * batch / statistics.median(times)


@torch.no_grad()
def greedy(model, prompts) -> tuple[list[int], list[list[int]]]:
    x = torch.tensor(prompts)
    nxt = model(x).logits[:, -1].argmax(-1).tolist()
    results = Engine(model, max_batch=64).run([Request(p, 16, {"greedy": True}) for p in prompts])
    return nxt, [r.tokens for r in results]


def main(argv=None) -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--draft")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=500)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    val = TokenDataset.bundled(0.05).val
    rng = np.random.default_rng(0)
    prompts = [val.window(int(s), 32).tolist() for s in rng.integers(0, len(val) - 32, args.prompts)]
    base = load_model(args.checkpoint).eval()
    seq_len = (read_config(args.checkpoint)[1] or {}).get("seq_len", base.cfg.max_seq_len)
    ref_next, ref_cont = greedy(base, prompts)
    rows = {}
    for name in VARIANTS:
        model = variant(base, name).eval()
        nxt, cont = (ref_next, ref_cont) if name == "fp32" else greedy(model, prompts)
        rows[name] = {
            "val_nats_per_byte": round(val_loss(model, val, seq_len), 4),
            "expert_bytes": expert_bytes(model),
            "weight_bytes": weight_bytes(model),
            "decode_tok_s_b1": round(decode_tokens_per_s(model, prompts, 1, args.reps), 1),
            "decode_tok_s_b8": round(decode_tokens_per_s(model, prompts, 8, args.reps), 1),
            "next_token_agreement": round(sum(a == b for a, b in zip(nxt, ref_next)) / len(prompts), 4),
            "continuation_identical": round(sum(a == b for a, b in zip(cont, ref_cont)) / len(prompts), 4),
        }
        rows[name]["delta_vs_fp32"] = round(rows[name]["val_nats_per_byte"] - rows["fp32"]["val_nats_per_byte"], 4)
        print(name, rows[name], flush=True)
    draft = {}
    if args.draft:
        d = load_model(args.draft).eval()
        for name in VARIANTS:
            m = variant(d, name).eval()
            d_len = (read_config(args.draft)[1] or {}).get("seq_len", d.cfg.max_seq_len)
            draft[name] = {"val_nats_per_byte": round(val_loss(m, val, d_len), 4), "expert_bytes": expert_bytes(m)}
        print("draft", draft, flush=True)
    env = harness.stamp()
    result = {
        "setup": {
            **env,
            "checkpoint": args.checkpoint,
            "draft": args.draft,
            "prompts": args.prompts,
            "seq_len": seq_len,
            "threads": torch.get_num_threads(),
        },
        "tiny": rows,
        "draft": draft,
    }
    text = markdown(result)
    harness.write_result(
        args.out,
        "quantized",
        result,
        text,
        by="bench.quantized_serving",
        env=env,
        title=f"Weight-only quantized serving: {base.cfg.name}",
    )
    print(text)


def markdown(result: dict) -> str:
    lines = [
        f"checkpoint {result['setup']['checkpoint']}",
        "",
        "| weights | val nats/byte | vs fp32 | expert bytes | all weights | decode tok/s b=1 | b=8 "
        "| next token = fp32 | 16-token continuation = fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["tiny"].items():
        lines.append(
            f"| {name} | {r['val_nats_per_byte']} | {r['delta_vs_fp32']:+.4f} | "
            f"{r['expert_bytes'] / 2**20:.2f} MiB | {r['weight_bytes'] / 2**20:.2f} MiB | "
            f"{r['decode_tok_s_b1']} | {r['decode_tok_s_b8']} | {r['next_token_agreement']:.1%} | "
            f"{r['continuation_identical']:.1%} |"
        )
    if result["draft"]:
        lines += ["", "| draft experts | val nats/byte | expert bytes |", "|---|---|---|"]
        lines += [
            f"| {n} | {r['val_nats_per_byte']} | {r['expert_bytes'] / 2**20:.2f} MiB |"
            for n, r in result["draft"].items()
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
