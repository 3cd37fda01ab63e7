"""Bytes against a byte-level BPE on the bundled corpus: the tiny preset trained for the same wall-clock
on each, compared in bits per byte of the same held-out text.

    python -m bench.compare_tokenizers                      # 240 s each, bpe:4096 (about 10 minutes)
    python -m bench.compare_tokenizers --budget 60 --bpe 2048

Per token the losses are not comparable (a BPE token carries about 3 bytes), so each model is scored
on the whole validation split (the bundled corpus's last 5%, the same text for both): the summed
cross-entropy of every token, each window of seq_len tokens predicted from its own earlier tokens
only, divided by the split's UTF-8 bytes and ln 2. Both runs use the preset unchanged (seq_len 64
tokens, batch 32), so the BPE model sees about 3x the text per step, and pays for a 4096-row
embedding and output head; that trade is what is measured. They run one after the other; the
machine should be otherwise idle.

Writes bench/results/<device>/tokenizers.{json,md}.
"""

from __future__ import annotations

import math
import pathlib
import time

import torch

from bench import harness
from moe.config import load_config, load_train_config
from moe.data import TokenDataset
from moe.data.prepare import prepare
from moe.training import load_model, train


@torch.no_grad()
def bits_per_byte(model, dataset: TokenDataset, seq_len: int, batch: int = 64) -> float:
    """Summed cross-entropy over the whole validation stream in windows of seq_len, per byte, in bits."""
    model.eval()
    ids = torch.from_numpy(dataset.val.window(0, len(dataset.val)).astype("int64"))
    n = (len(ids) - 1) // seq_len * seq_len  # whole windows; the last partial one is left out...
    x, y = ids[:n].view(-1, seq_len), ids[1 : n + 1].view(-1, seq_len)
    nats = 0.0
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch]).logits
        nats += torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), y[i : i + batch].flatten(), reduction="sum"
        ).item()
    covered = len(dataset.tokenizer.decode(ids[1 : n + 1].tolist()).encode("utf-8"))  # ...so count the bytes scored
    return nats / covered / math.log(2)


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--budget", type=float, default=240.0, help="training seconds per tokenizer")
    ap.add_argument("--bpe", type=int, default=4096, help="BPE vocabulary size")
    ap.add_argument("--work", default="runs/tokenizers", help="datasets and runs go here")
    args = ap.parse_args()
    work = pathlib.Path(args.work)
    rows = {}
    for spec in ("bytes", f"bpe:{args.bpe}"):
        name = spec.replace(":", "")
        data = work / f"shakespeare-{name}"
        t = time.perf_counter()
        prepare(["shakespeare"], spec, data, overwrite=True, progress=False)
        prep_s = time.perf_counter() - t
        ds = TokenDataset.open(data)
        cfg = load_config("tiny", vocab_size=ds.tokenizer.vocab_size)
        tcfg = load_train_config("tiny", time_budget_s=args.budget)
        summary = train(cfg, tcfg, work / name, data=data, overwrite=True, progress=False, plot=False)
        model = load_model(work / name)
        rows[spec] = {
            "vocab": ds.tokenizer.vocab_size,
            "prepare_s": round(prep_s, 1),
            "val_bytes_per_token": round(1 / ds.val_tokens_per_byte, 3),
            "parameters": sum(p.numel() for p in model.parameters()),
            "steps": summary["steps"],
            "train_time_s": summary["train_time_s"],
            "tokens_per_s": summary["tokens_per_s"],
            "bytes_per_s": round(summary["tokens_per_s"] / ds.val_tokens_per_byte),
            "val_nats_per_token": round(summary["final_val_loss"], 4),
            "val_bits_per_byte_sampled": round(summary["final_val_bits_per_byte"], 4),
            "val_bits_per_byte": round(bits_per_byte(model, ds, tcfg.seq_len), 4),
        }
        print(spec, rows[spec], flush=True)
    env = harness.stamp()
    result = {
        "setup": {**env, "budget_s": args.budget, "config": "tiny", "threads": torch.get_num_threads()},
        "rows": rows,
    }
    text = markdown(result)
    harness.write_result(
        args.out,
        "tokenizers",
        result,
        text,
        by="bench.compare_tokenizers",
        env=env,
        title="Bytes against a byte-level BPE",
    )
    print(text)


def markdown(result: dict) -> str:
    lines = [
        f"tiny trained {result['setup']['budget_s']:.0f} s per tokenizer on the bundled corpus.",
        "",
        "| tokenizer | vocab | parameters | bytes/token (val) | steps | tokens/s | bytes/s | val nats/token "
        "| val bits/byte (whole split) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for spec, r in result["rows"].items():
        lines.append(
            f"| {spec} | {r['vocab']:,} | {r['parameters']:,} | {r['val_bytes_per_token']} | {r['steps']:,} | "
            f"{r['tokens_per_s']:,} | {r['bytes_per_s']:,} | {r['val_nats_per_token']} | "
            f"{r['val_bits_per_byte']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
