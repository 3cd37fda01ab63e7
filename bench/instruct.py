"""What instruction fine-tuning buys: the tiny model pretrained on the bundled plays, then fine-tuned on
the project's word tasks (moe/data/make_instruct.py), scored on held-out words before and after.

    python -m bench.instruct            # ~9 minutes on 2 cores; writes bench/results/<device>/instruct.*

1. pretrain configs/tiny.toml on the bundled corpus (--base-steps, seq_len 128)
2. prepare the word tasks with --format chat and the base checkpoint's tokenizer (plain template)
3. fine-tune from the base weights (train --init-from) on packed rows, loss on the answers only
4. score both checkpoints on every held-out conversation, each run alone: the answer loss (nats per
   answer token, the answer's end of turn included) and exact match of the greedy answer (up to the
   newline that ends a plain-template turn), overall and per task

Held-out words never appear in the fine-tuning rows under any task, so exact match needs the rule, not
a memorised answer. A third row fine-tunes the same steps from random weights: what the pretraining
contributes.
"""

from __future__ import annotations

import collections
import json
import tempfile
import time

import torch

from bench.harness import markdown_table, parser, write_result
from moe.config import load_config, load_train_config
from moe.data import chat
from moe.data.instruct import encode_example
from moe.data.make_instruct import write as write_tasks
from moe.data.prepare import prepare
from moe.serving.generate import generate
from moe.training import load_model, train
from moe.training.task import open_dataset

QUIET = dict(log=lambda *_: None, progress=False, plot=False)


def score(model, tok, conversations: list[dict], max_new: int = 16) -> dict:
    """Answer loss and exact match of the greedy answer, over conversations of one user and one
    assistant message each; per task too."""
    nats, tokens, right = 0.0, 0, collections.Counter()
    seen = collections.Counter()
    model.eval()
    for c in conversations:
        ids, mask, _ = encode_example(tok, c["messages"])
        x = torch.tensor([ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(x).logits[0, :-1].double(), -1)
        trained = torch.tensor(mask[1:], dtype=torch.bool)
        nats -= float(logp[trained].gather(-1, x[0, 1:][trained][:, None]).sum())
        tokens += int(trained.sum())
        prompt = tok.encode_prompt(chat.render(None, c["messages"][:1]))
        out = generate(model, prompt, max_new, greedy=True, stop_tokens=tuple(tok.encode("\n")))
        answer = tok.decode(out).strip()
        task = c["messages"][0]["content"].split(":")[0]
        seen[task] += 1
        right[task] += answer == c["messages"][1]["content"]
    per_task = {t: round(right[t] / seen[t], 4) for t in sorted(seen)}
    return {
        "answer_nats_per_token": round(nats / tokens, 4),
        "exact_match": round(sum(right.values()) / len(conversations), 4),
        "by_task": per_task,
    }


def markdown(result: dict) -> str:
    return (
        f"{result['held_out_conversations']} held-out conversations (words never seen in fine-tuning). Answer "
        "loss: nats per answer token, teacher-forced; exact match: the greedy answer.\n\n"
        + markdown_table(result["rows"])
    )


def main(argv=None) -> None:
    p = parser(__doc__)
    p.add_argument("--base-steps", type=int, default=600)
    p.add_argument("--tune-steps", type=int, default=800)
    p.add_argument("--held-out", type=int, default=300, help="conversations scored (of the held-out words')")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_cfg = load_config("tiny")
        base_cfg = load_train_config("tiny", seq_len=128, max_steps=args.base_steps, eval_interval=args.base_steps)
        base = train(model_cfg, base_cfg, f"{tmp}/base", **QUIET)
        tasks = write_tasks(f"{tmp}/tasks")
        prepare(
            [tasks["train"]], f"{tmp}/base", f"{tmp}/data", format="chat", val_data=[tasks["val"]], log=lambda *_: None
        )
        tune = dict(
            seq_len=128, max_steps=args.tune_steps, warmup_steps=50, lr=2e-3, min_lr=2e-4, eval_interval=args.tune_steps
        )
        tune_cfg = load_train_config("tiny", **tune)
        tuned = train(model_cfg, tune_cfg, f"{tmp}/tuned", data=f"{tmp}/data", init_from=f"{tmp}/base", **QUIET)
        train(model_cfg, tune_cfg, f"{tmp}/scratch", data=f"{tmp}/data", **QUIET)
        held_out = [json.loads(line) for line in tasks["val"].open()][: args.held_out]
        tok = open_dataset(f"{tmp}/data", 0.05, 0).tokenizer
        rows = []
        for name, run, steps in (
            ("pretrained only", f"{tmp}/base", f"{args.base_steps} on the plays"),
            ("pretrained, then fine-tuned", f"{tmp}/tuned", f"{args.base_steps} + {args.tune_steps}"),
            ("fine-tuned from random weights", f"{tmp}/scratch", f"{args.tune_steps}"),
        ):
            s = score(load_model(run), tok, held_out)
            rows.append(
                {"model": name, "steps": steps, **{k: v for k, v in s.items() if k != "by_task"}, **s["by_task"]}
            )
            print(rows[-1])
    result = {
        "held_out_conversations": len(held_out),
        "wall_s": round(time.perf_counter() - t0),
        "fine_tuning": {**tune, "drawn": tuned.get("sources")},
        "base_final_val_nats_per_byte": base["final_val_loss"],
        "rows": rows,
    }
    js, _ = write_result(
        args.out, "instruct", result, markdown(result), by="bench.instruct", title="Instruction fine-tuning"
    )
    print(f"-> {js}")


if __name__ == "__main__":
    main()
