"""Our engine against transformers on the same weights, in one process: offline greedy throughput.

    python -m bench.vs_transformers [--widths 128 512] [--rounds 3] [--prompts 32 --prompt-len 32 --new 64]

For each width, a SwiGLU `tiny` (random weights from a fixed seed) is saved, exported with
`convert --to-hf`, and loaded by transformers as MixtralForCausalLM (float32, its default attention).
One workload: --prompts prompts of --prompt-len random token ids, submitted together, --new greedy
tokens each (no end-of-sequence stop on either side). Three ways to run it, alternated within
every round (the order rotates) so the machine's drift falls on all three alike, after one untimed
warm-up call of each:
  ours       moe.serving.Engine.run (continuous batching over paged K/V, max_batch = --prompts)
  batch      transformers' generate_batch (its continuous batching; a cache for every sequence at
             once, no prefix sharing, no CUDA-graph warm-up)
  padded     transformers' model.generate on the padded [prompts, prompt_len] batch
Reported: output tokens/s per way (the median over rounds; all rounds in the JSON), our ratio to
each, and how many sequences' greedy tokens equal ours token for token. Writes
bench/results/<device>/vs_transformers.{json,md}.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time

import torch

from bench import harness
from moe.config import load_config
from moe.model import MoETransformer
from moe.serving import Engine, Request
from moe.training import save_checkpoint
from moe.training.hf_convert import to_hf

WAYS = ("ours", "batch", "padded")


def models(width: int, seed: int):
    """Ours and transformers' copy of one random SwiGLU tiny of d_model `width`."""
    import transformers

    cfg = load_config("tiny", activation="swiglu", d_model=width, d_ff=2 * width)
    torch.manual_seed(seed)
    ours = MoETransformer(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        step = save_checkpoint(f"{tmp}/run", ours, cfg)
        to_hf(step, f"{tmp}/hf", log=lambda *_: None)
        theirs = transformers.MixtralForCausalLM.from_pretrained(f"{tmp}/hf", dtype=torch.float32).eval()
    return cfg, ours, theirs


def run_ours(model, prompts, new):
    engine = Engine(model, max_batch=len(prompts))
    return [r.tokens for r in engine.run([Request(p, new, {"greedy": True}) for p in prompts])]


def run_batch(model, prompts, new):
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    config = GenerationConfig(max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
    # A cache sized to hold every sequence at once, as ours is (its default sizes one from free memory
    # and zeroes it each call), no prefix sharing (ours is off too), and no warm-up (it captures CUDA
    # graphs): with its defaults the same call took 16 s here instead of 2.5.
    blocks = len(prompts) * -(-(len(prompts[0]) + new) // ContinuousBatchingConfig.page_size)
    cb = ContinuousBatchingConfig(num_blocks=blocks, allow_block_sharing=False)
    out = model.generate_batch(
        prompts, generation_config=config, continuous_batching_config=cb, progress_bar=False, warmup=False
    )
    by_prompt = {tuple(o.prompt_ids): o.generated_tokens for o in out.values()}
    return [list(by_prompt[tuple(p)]) for p in prompts]


@torch.no_grad()
def run_padded(model, prompts, new):
    ids = torch.tensor(prompts)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[:, ids.shape[1] :].tolist()


RUN = {"ours": run_ours, "batch": run_batch, "padded": run_padded}


def measure(width: int, args) -> dict:
    cfg, ours, theirs = models(width, args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    prompts = torch.randint(0, cfg.vocab_size, (args.prompts, args.prompt_len), generator=gen).tolist()
    rates = {w: [] for w in WAYS}
    tokens = {}
    for way in WAYS:  # untimed: first-call costs (allocations, transformers' manager start) on neither side
        RUN[way](ours if way == "ours" else theirs, prompts[:2], 2)
    for r in range(args.rounds):
        for way in WAYS[r % 3 :] + WAYS[: r % 3]:
            model = ours if way == "ours" else theirs
            t = time.perf_counter()
            out = RUN[way](model, prompts, args.new)
            seconds = time.perf_counter() - t
            assert all(len(o) == args.new for o in out), way
            rates[way].append(args.prompts * args.new / seconds)
            tokens[way] = out
            print(f"d_model {width} round {r}: {way:6} {rates[way][-1]:8.1f} tokens/s", flush=True)
    median = {w: statistics.median(v) for w, v in rates.items()}
    return {
        "d_model": width,
        "params": sum(p.numel() for p in ours.parameters()),
        "tokens_per_s": median,
        "rounds": rates,
        "ours_over_batch": median["ours"] / median["batch"],
        "ours_over_padded": median["ours"] / median["padded"],
        "same_greedy_tokens": {w: sum(a == b for a, b in zip(tokens["ours"], tokens[w])) for w in ("batch", "padded")},
    }


def main(argv=None) -> None:
    p = harness.parser(__doc__)
    p.add_argument("--widths", type=int, nargs="+", default=[128, 512])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="vs_transformers")
    args = p.parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import transformers

    rows = [measure(w, args) for w in args.widths]
    result = {
        "workload": {"prompts": args.prompts, "prompt_len": args.prompt_len, "new_tokens": args.new},
        "rounds": args.rounds,
        "transformers": transformers.__version__,
        "rows": rows,
    }
    md = markdown(result)
    harness.write_result(args.out, args.name, result, md, by="bench.vs_transformers", title="Ours against transformers")
    print(md)


def markdown(result: dict) -> str:
    w = result["workload"]
    table = [
        {
            "d_model": r["d_model"],
            "ours tok/s": r["tokens_per_s"]["ours"],
            "generate_batch tok/s": r["tokens_per_s"]["batch"],
            "padded generate tok/s": r["tokens_per_s"]["padded"],
            "ours / generate_batch": r["ours_over_batch"],
            "ours / padded": r["ours_over_padded"],
            "same greedy (batch, padded)": f"{r['same_greedy_tokens']['batch']}, {r['same_greedy_tokens']['padded']}"
            f" of {w['prompts']}",
        }
        for r in result["rows"]
    ]
    return (
        f"{w['prompts']} prompts of {w['prompt_len']} random tokens submitted together, {w['new_tokens']} greedy "
        f"tokens each; medians of {result['rounds']} alternated rounds; transformers {result['transformers']}.\n\n"
        + harness.markdown_table(table)
    )


if __name__ == "__main__":
    main()
