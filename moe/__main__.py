"""Command line: python -m moe {prepare, train, render, generate, serve-bench, quantize, convert, figures} --help

Exit codes: 0 done; 2 bad input, refused before any work (a bad flag or file, a locked or unwritable
run directory, a damaged checkpoint, changed settings on --resume); 3 training stopped by a loss or
weights that are not finite (the last good checkpoint is kept); 130 training interrupted by Ctrl-C or
SIGTERM after writing a checkpoint (continue with --resume); 1 anything else (a bug: a traceback).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

from moe.config import EXPERT_BACKENDS  # imports no torch, so --help stays fast

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


def _overrides(pairs: list[str]) -> dict:
    from moe.config import parse_value

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"override {pair!r} is not key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = parse_value(value.strip())
    return out


def cmd_figures(args) -> int:
    from moe.config import load_config
    from moe.estimates.report import print_figures
    from moe.layout import parse_layout

    layout = parse_layout(args.layout) if args.layout else None
    cfg = load_config(args.config, **_overrides(args.set))
    if args.simulate and layout is None:
        raise ValueError("--simulate needs --layout: it builds one rank of each pipeline stage of that layout")
    if args.simulate:
        layout.check(cfg)  # before the figures, so a layout that cannot be built says so at once
    print_figures(cfg, layout, args.batch_tokens, args.seq_len)
    if args.simulate:
        from moe.estimates.units import format_table
        from moe.parallel.simulate import simulation_rows

        rows, seconds = simulation_rows(cfg, layout)
        print(f"\nsimulated: the first rank of each pipeline stage, built on the meta device in a fake world of "
              f"{layout.world_size:,} ranks ({seconds:.1f} s); elements and bytes read off its sharded tensors, "
              "against the arithmetic above")
        print(format_table(rows, ("stage", "layers", "params", "vs arith", "bf16 (inference)",
                                  "weights kept = gradients", "vs arith", "AdamW state", "vs arith",
                                  "training state, peak", "vs arith")))
    return EXIT_OK


def cmd_train(args) -> int:
    from moe.config import load_config, load_train_config, split_overrides
    from moe.layout import Layout, load_layout

    model_over, train_over = split_overrides(_overrides(args.set))
    for flag in ("lr", "batch_size", "seq_len", "max_steps", "time_budget_s", "seed"):
        if getattr(args, flag) is not None:
            train_over[flag] = getattr(args, flag)
    if args.expert_backend:
        model_over["expert_backend"] = args.expert_backend
    if args.compile:
        train_over["compile"] = True
    if args.train_language_model:
        train_over["train_language_model"] = True
    train_cfg = load_train_config(args.config, **train_over)
    data = None
    if args.data is not None:
        from moe.data import open_data

        data = open_data(args.data, train_cfg.val_fraction)  # opened once: the loop takes it as it is
        model_over.setdefault("vocab_size", data.tokenizer.vocab_size)  # follows the data unless --set (checked)
    model_cfg = load_config(args.config, **model_over)
    if args.dense:
        model_cfg = model_cfg.dense_twin()
    layout = load_layout(args.config, **{k: getattr(args, k) for k in ("dp", "tp", "ep", "pp", "microbatches",
                                                                      "schedule", "first_stage_layers", "sharding")})
    out = args.out or f"runs/{model_cfg.name}"
    world = int(os.environ.get("WORLD_SIZE", 1))
    loop_args = dict(data=data, resume=args.resume, overwrite=args.overwrite, allow_changes=args.allow_changes,
                     init_from=args.init_from, device=args.device, progress=None if not args.no_progress else False)
    if layout != Layout() or world > 1 or (args.resume and _holds_distributed_checkpoint(out)):
        if model_cfg.vision is not None:
            raise ValueError(f"config {model_cfg.name!r} has a vision path, which trains in one process: give no "
                             "parallel layout and no torchrun")
        summary = _train_distributed(model_cfg, train_cfg, layout, world, out, loop_args)
    else:
        from moe.training import train

        print(f"training {model_cfg.name} -> {out}")
        summary = train(model_cfg, train_cfg, out, **loop_args)
    return EXIT_INTERRUPTED if summary["interrupted"] else EXIT_OK


def cmd_render(args) -> int:
    """A line of text drawn as the vision model sees it (moe/vision/render.py), as a PNG."""
    from PIL import Image

    from moe.config import load_config
    from moe.vision.render import render_line

    v = load_config(args.config).vision
    if v is None:
        raise ValueError(f"config {args.config!r} has no [vision] table: give a vision preset, e.g. tiny-vision")
    pixels = render_line(args.text, args.seed, v.image_height, v.image_width)
    out = pathlib.Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(out, format="PNG")
    except OSError as e:
        raise ValueError(f"cannot write {str(out)!r}: {e.strerror or e}") from None
    print(f"wrote {out} ({v.image_width} x {v.image_height} pixels, grayscale"
          f"{f', augmentation seed {args.seed}' if args.seed is not None else ', no augmentation'})")
    return EXIT_OK


def cmd_prepare(args) -> int:
    from moe.data.prepare import prepare

    prepare(args.data, args.tokenizer, args.out, val_data=args.val_data or (), val_fraction=args.val_fraction,
            on_bad=args.on_bad, overwrite=args.overwrite, shard_tokens=args.shard_tokens,
            progress=None if not args.no_progress else False)
    return EXIT_OK


def cmd_convert(args) -> int:
    from moe.training import hf_mixtral

    if args.from_hf:
        hf_mixtral.from_hf(args.from_hf, args.out, overwrite=args.overwrite)
    else:
        hf_mixtral.to_hf(args.to_hf, args.out, overwrite=args.overwrite)
    return EXIT_OK


def cmd_quantize(args) -> int:
    from moe.model.quantized import expert_bytes, weight_bytes
    from moe.training.checkpoint import load_model, quantize_checkpoint

    step_dir, before = quantize_checkpoint(args.checkpoint, args.out, args.dtype, dense=args.dense,
                                           overwrite=args.overwrite)
    quantized = load_model(step_dir)
    after = expert_bytes(quantized)
    print(f"experts quantized to {args.dtype}: {before / 2**20:.2f} MiB -> {after / 2**20:.2f} MiB (scales "
          f"included, {before / after:.2f}x smaller); all weights {weight_bytes(quantized) / 2**20:.2f} MiB -> {step_dir}")
    return EXIT_OK


def _holds_distributed_checkpoint(path) -> bool:
    from moe.training import run_dir

    try:
        return run_dir.is_distributed(run_dir.resolve(path))
    except FileNotFoundError:
        return False


def _train_distributed(model_cfg, train_cfg, layout, world, out, loop_args) -> dict:
    """Under torchrun (or in one process for a layout of one rank): check the layout against the
    world before any process group exists, then train."""
    try:
        layout.check(model_cfg, world, train_cfg.batch_size)
    except ValueError as e:
        hint = (f"; launch it with torchrun --nproc-per-node {layout.world_size} -m moe train ..."
                if layout.world_size != world else "")
        raise ValueError(f"{e}{hint}") from None

    from moe.parallel.trainer import close_process_group, train_distributed

    if int(os.environ.get("RANK", 0)) == 0:
        print(f"training {model_cfg.name} -> {out} in layout {layout.describe()}")
    try:
        return train_distributed(model_cfg, train_cfg, layout, out, **loop_args)
    finally:
        close_process_group()


def _sampling(args) -> dict:
    """The sampling flags, checked (finite numbers in range) before any model is loaded."""
    from moe.serving.sampling import SamplingParams

    settings = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "greedy": args.greedy}
    SamplingParams(**settings)
    return settings


def _device(args) -> str:
    import torch

    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _load(path, args):
    from moe.training import load_model

    overrides = {"expert_backend": args.expert_backend} if args.expert_backend else {}
    return load_model(path, _device(args), **overrides)


def _tokenizer(checkpoint, draft_checkpoint=None):
    """The checkpoint's own tokenizer; a draft model must share it."""
    from moe.data import tokenizer as tokenizers
    from moe.training.run_dir import resolve

    tok = tokenizers.load(resolve(checkpoint))
    if draft_checkpoint is not None:
        draft = tokenizers.load(resolve(draft_checkpoint))
        if draft.fingerprint != tok.fingerprint:
            raise ValueError(f"--draft-checkpoint {draft_checkpoint} uses the {draft.describe()} tokenizer, "
                             f"--checkpoint {checkpoint} the {tok.describe()} one: speculative decoding needs one")
    return tok


def _images(paths: list[str], cfg) -> list:
    """--image files, sized for the model's encoder (moe/vision/images.py); each one's placeholder
    goes before the prompt."""
    if not paths:
        return []
    if cfg.vision is None:
        raise ValueError(f"--image: the checkpoint's model {cfg.name!r} reads no images (its config has no [vision] table)")
    from moe.vision.images import load_image

    return [load_image(p, cfg.vision) for p in paths]


def cmd_generate(args) -> int:
    """The text, then one line of statistics: tokens, time, tokens/s (and the draft's acceptance)."""
    import random
    import time

    from moe.serving import Engine, Request

    sampling = _sampling(args)
    tok = _tokenizer(args.checkpoint, args.draft_checkpoint)
    model = _load(args.checkpoint, args)
    draft = _load(args.draft_checkpoint, args) if args.draft_checkpoint else None
    images = _images(args.image, model.cfg)
    placeholders = [model.cfg.vision.image_token] * len(images) if images else []
    text = args.prompt if args.prompt is not None else ("" if images else "\n")
    prompt = placeholders + (tok.encode_prompt(text) if text else [])
    if not prompt:
        raise ValueError("--prompt is empty: give at least one character to continue (or an --image)")
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    request = Request(prompt, args.max_new_tokens, sampling=sampling, seed=seed, images=images)
    engine = Engine(model, max_batch=1, draft=draft, draft_tokens=args.draft_tokens,  # pages for one full sequence
                    compile=args.compile)
    t = time.perf_counter()
    result = engine.run([request])[0]
    seconds = time.perf_counter() - t
    if isinstance(result, Exception):
        raise result
    print("<image>" * len(images) + tok.decode(prompt[len(images):] + result.tokens))
    n = len(result.tokens)
    stats = (f"{n} new tokens ({result.finish_reason}) in {seconds:.2f} s, {n / seconds:.1f} tokens/s, "
             f"{result.target_forwards} target forwards")
    if engine.compile_s is not None:
        stats += f" ({engine.compile_s:.2f} s of it in forwards that compiled)"
    if draft is not None:
        stats += (f"; {args.draft_tokens} draft tokens: acceptance {result.draft_accepted}/{result.draft_proposed} = "
                  f"{result.draft_accepted / max(1, result.draft_proposed):.3f}, "
                  f"{n / result.target_forwards:.2f} tokens per target forward")
    print(f"\n[{stats}]", file=sys.stderr)
    return EXIT_OK


def cmd_serve_bench(args) -> int:
    import torch

    from moe.profiling.timing import environment
    from moe.serving import Engine, replay
    from moe.training.run_dir import prepare

    sampling = _sampling(args)
    if args.out:
        prepare(args.out)  # an unwritable --out fails now, not after the replay
    tok = None
    if args.checkpoint:
        tok = _tokenizer(args.checkpoint, args.draft_checkpoint)
        model = _load(args.checkpoint, args)
    else:
        from moe.config import load_config
        from moe.model import MoETransformer

        torch.manual_seed(args.seed)
        model = MoETransformer(load_config(args.config, **_overrides(args.set))).to(_device(args))
    draft = _load(args.draft_checkpoint, args) if args.draft_checkpoint else None
    engine = Engine(model, kv_budget_bytes=int(args.kv_budget_mb * 2**20), page_size=args.page_size,
                    max_batch=args.max_batch, draft=draft, draft_tokens=args.draft_tokens, compile=args.compile)
    requests = replay.make_requests(args.requests, args.prompt_len, args.max_new_tokens, sampling, args.seed, tok)
    summary = replay.replay(engine, requests, args.rate, args.seed)
    if engine.compile_s is not None:
        summary["compile_s"] = round(engine.compile_s, 2)  # inside the replay: early requests waited for it
    summary["setup"] = {**environment(torch.cuda.is_available()), "config": model.cfg.name, "checkpoint": args.checkpoint,
                        "draft": args.draft_checkpoint, "draft_tokens": args.draft_tokens if draft else None,
                        "rate": args.rate, "prompt_len": args.prompt_len, "max_new_tokens": args.max_new_tokens,
                        "kv_pages": engine.n_pages, "page_size": args.page_size, "max_batch": args.max_batch,
                        "sampling": sampling}
    header = (f"serve-bench {model.cfg.name}{' + draft' if draft else ''}: {args.requests} requests at "
              f"{args.rate}/s, prompt {args.prompt_len}, {args.max_new_tokens} new tokens, "
              f"{engine.n_pages} pages of {args.page_size}")
    if engine.compile_s is not None:
        header += f"; compiled ({engine.compile_s:.1f} s in forwards that compiled, inside the latencies)"
    replay.print_summary(summary, header)
    if args.out:
        out = replay.write(summary, args.out, args.name or f"serve-{model.cfg.name}", header)
        print(f"wrote {out}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m moe", description="A Mixture-of-Experts transformer, tiny to GPT-4 shape.")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("figures", help="parameters, FLOPs and memory a config implies, beside the leaked GPT-4 figures")
    f.add_argument("--config", default="gpt4", help="preset name (configs/NAME.toml) or a .toml path")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a model field")
    f.add_argument("--layout", help="add the per-GPU view of a parallel layout, e.g. tp=8,pp=15,dp=208,microbatches=32 "
                   "(keys: dp tp ep pp microbatches schedule first_stage_layers sharding)")
    f.add_argument("--batch-tokens", type=POSITIVE_FLOAT, help="tokens per training step for --layout (default 60e6, the leak's)")
    f.add_argument("--seq-len", type=POSITIVE_INT, help="sequence length for --layout (default: the config's max_seq_len)")
    f.add_argument("--simulate", action="store_true", help="also build one rank of each pipeline stage of --layout "
                   "on the meta device in a fake process group and count its sharded tensors (needs torch)")
    f.set_defaults(func=cmd_figures)

    d = sub.add_parser("prepare", help="tokenize your text into a dataset of memory-mapped shards for train --data")
    d.add_argument("--data", nargs="+", required=True, metavar="PATH", help="text files, directories of them, "
                   "JSONL files (a \"text\" field per line), .gz of these, or 'shakespeare' (the bundled corpus)")
    d.add_argument("--tokenizer", default="bytes", help="bytes (default), bpe:N (a byte-level BPE of N tokens "
                   "learned from the training documents) or cl100k_base (GPT-4's; tiktoken)")
    d.add_argument("--out", required=True, help="the dataset directory, e.g. data/NAME")
    d.add_argument("--val-data", nargs="+", metavar="PATH", help="the validation documents (else: --val-fraction "
                   "of the documents, chosen by a hash of their names)")
    d.add_argument("--val-fraction", type=float, default=0.05, help="share of documents held out (default 0.05)")
    d.add_argument("--on-bad", choices=("stop", "skip"), default="stop",
                   help="an empty, unreadable or non-UTF-8 file: stop (default, before writing anything) or skip it")
    d.add_argument("--shard-tokens", type=POSITIVE_INT, default=100_000_000, help="tokens per shard file")
    d.add_argument("--overwrite", action="store_true", help="replace a dataset already at --out")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_prepare)

    t = sub.add_parser("train", help="train on the bundled Shakespeare corpus (byte-level) or a prepared dataset")
    t.add_argument("--config", default="tiny", help="preset name or .toml path")
    t.add_argument("--data", help="a dataset written by `prepare` (default: the bundled corpus, byte-level); "
                   "vocab_size follows its tokenizer")
    t.add_argument("--out", help="run directory for checkpoints and plots (default runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue exactly from the latest checkpoint in --out")
    t.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds checkpoints (deletes them)")
    t.add_argument("--init-from", dest="init_from", metavar="CHECKPOINT", help="start a new run from this "
                   "checkpoint's weights (e.g. extend its context: --seq-len 1024 --set max_seq_len=1024 --set "
                   "'rope_scaling={rope_type=\"yarn\", factor=4.0, original_max_position_embeddings=256}')")
    t.add_argument("--allow-changes", action="store_true", help="with --resume: accept training settings that differ "
                   "from the checkpoint's (the run then no longer continues as if never stopped)")
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
    t.add_argument("--compile", action="store_true", help="torch.compile the training step (one process; its first "
                   "step compiles, inside the time budget)")
    t.add_argument("--train-language-model", dest="train_language_model", action="store_true",
                   help="a vision config: train the language model too (default: frozen, Flamingo's stage 2)")
    t.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    par = t.add_argument_group("parallel layout (launch with torchrun; the product of the degrees is the world "
                               "size; defaults from the config's [parallel] table, else 1)")
    par.add_argument("--dp", type=int, help="data parallel replicas")
    par.add_argument("--tp", type=int, help="tensor parallel: split query heads and each expert's d_ff")
    par.add_argument("--ep", type=int, help="expert parallel: split the experts (tokens travel by all-to-all)")
    par.add_argument("--pp", type=int, help="pipeline parallel: split the layers into stages")
    par.add_argument("--microbatches", type=int, help="microbatches per step (pipeline; else gradient accumulation)")
    par.add_argument("--schedule", choices=("1f1b", "gpipe"), help="pipeline schedule (default 1f1b)")
    par.add_argument("--first-stage-layers", dest="first_stage_layers", type=int,
                     help="layers on the first pipeline stage, which also holds the embedding (default: even split)")
    par.add_argument("--sharding", choices=("zero1", "fsdp"),
                     help="data parallel, both on FSDP2: zero1 (default) gathers the weights once per step, fsdp re-gathers them for backward (less memory, 1.5x the traffic)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any model or [train] field, e.g. --set n_layers=2 --set warmup_steps=10")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("render", help="draw a line of text as a vision model sees it (a grayscale PNG)")
    r.add_argument("text", help="up to 32 printable ASCII characters")
    r.add_argument("--out", required=True, help="the PNG to write")
    r.add_argument("--config", default="tiny-vision", help="a vision preset (its image size)")
    r.add_argument("--seed", type=int, help="augmentation seed (shift, ink, noise); default: none")
    r.set_defaults(func=cmd_render)

    g = sub.add_parser("generate", help="sample text from a checkpoint through the KV cache")
    g.add_argument("--checkpoint", required=True, help="run directory (uses its latest step) or a step directory")
    g.add_argument("--prompt", help="text to continue (default: a newline; with --image, nothing: read the image)")
    g.add_argument("--max-new-tokens", type=POSITIVE_INT, default=200, help="tokens to generate")
    g.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (0: greedy)")
    g.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with this much probability")
    g.add_argument("--greedy", action="store_true", help="always take the most likely token")
    g.add_argument("--seed", type=int, default=None, help="sampling seed")
    g.add_argument("--device", help="cpu or cuda")
    g.add_argument("--expert-backend", choices=EXPERT_BACKENDS, help="auto, torch or triton (default: the checkpoint's)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model's forward (the first steps compile)")
    g.add_argument("--image", action="append", default=[], metavar="FILE", help="a vision checkpoint: an image to "
                   "read (its placeholder goes before --prompt; repeat for several), e.g. from `render`")
    g.add_argument("--draft-checkpoint", help="speculative decoding with this draft model (same vocabulary); also "
                   "reports its acceptance and tokens per target forward (speedups: python -m bench.serving)")
    g.add_argument("--draft-tokens", type=POSITIVE_INT, default=4, help="tokens the draft proposes per step")
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("serve-bench", help="replay Poisson arrivals through the continuous-batching engine")
    s.add_argument("--config", default="tiny", help="preset with random weights (ignored with --checkpoint)")
    s.add_argument("--checkpoint", help="serve this trained model instead")
    s.add_argument("--draft-checkpoint", help="speculative decoding with this draft model")
    s.add_argument("--draft-tokens", type=POSITIVE_INT, default=4, help="tokens the draft proposes per step")
    s.add_argument("--rate", type=POSITIVE_FLOAT, default=4.0, help="mean arrivals per second (Poisson)")
    s.add_argument("--requests", type=POSITIVE_INT, default=32, help="requests to replay")
    s.add_argument("--prompt-len", type=POSITIVE_INT, default=32, help="prompt tokens (slices of the held-out text)")
    s.add_argument("--max-new-tokens", type=POSITIVE_INT, default=64, help="new tokens per request")
    s.add_argument("--kv-budget-mb", type=POSITIVE_FLOAT, default=16.0, help="KV cache memory (MiB) for all sequences")
    s.add_argument("--page-size", type=POSITIVE_INT, default=16, help="positions per KV page")
    s.add_argument("--max-batch", type=POSITIVE_INT, default=64, help="most sequences in one step")
    s.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (0: greedy)")
    s.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    s.add_argument("--top-p", type=float, default=None, help="nucleus sampling")
    s.add_argument("--greedy", action="store_true", help="always take the most likely token")
    s.add_argument("--seed", type=int, default=0, help="arrivals, prompts, random weights and request seeds")
    s.add_argument("--device", help="cpu or cuda")
    s.add_argument("--expert-backend", choices=EXPERT_BACKENDS, help="auto, torch or triton")
    s.add_argument("--compile", action="store_true", help="torch.compile the model's forward; the compile time lands "
                   "in the first requests' latency")
    s.add_argument("--out", help="write <name>.json and <name>.png (per-expert batch sizes over steps) here")
    s.add_argument("--name", help="file name stem (default serve-<config>)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a model field")
    s.set_defaults(func=cmd_serve_bench)

    q = sub.add_parser("quantize", help="a serving copy of a checkpoint with weight-only int8 / fp8 / int4 experts")
    q.add_argument("--checkpoint", required=True, help="run or step directory (unquantized)")
    q.add_argument("--dtype", required=True, choices=("int8", "fp8", "int4"), help="int8 or fp8 e4m3 per output "
                   "channel, or int4 in groups of 128 along the input (kernels/quantized.py)")
    q.add_argument("--dense", action="store_true", help="also the attention projections and the output head "
                   "(same scheme; PyTorch dequantize-and-matmul)")
    q.add_argument("--out", required=True, help="run directory for the quantized checkpoint")
    q.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    q.set_defaults(func=cmd_quantize)

    c = sub.add_parser("convert", help="Hugging Face Mixtral checkpoints to ours (--from-hf) and back (--to-hf)")
    way = c.add_mutually_exclusive_group(required=True)
    way.add_argument("--from-hf", metavar="DIR", help="a MixtralForCausalLM directory: config.json, safetensors "
                     "(sharded or not) and tokenizer.json; --out is then a run directory of ours")
    way.add_argument("--to-hf", metavar="CHECKPOINT", help="a run or step directory of ours (SwiGLU, untied, "
                     "dropless); --out is then the Hugging Face directory")
    c.add_argument("--out", required=True, help="where to write")
    c.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    c.set_defaults(func=cmd_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as e:
        from moe.training import TrainingError

        if isinstance(e, TrainingError):
            print(f"error: {e}", file=sys.stderr)
            return EXIT_STOPPED
        raise


if __name__ == "__main__":
    sys.exit(main())
