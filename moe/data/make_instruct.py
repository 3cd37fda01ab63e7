"""A small instruction set the project makes itself: three word tasks over the bundled plays' words.

    python -m moe.data.make_instruct --out data/words        # writes train.jsonl and val.jsonl

Each row is one conversation in the JSONL form `prepare --format chat` reads:

    {"messages": [{"role": "user", "content": "Reverse: night"}, {"role": "assistant", "content": "thgin"}]}

The tasks, one instruction each, so the model must read it: "Reverse: w" (the letters backwards),
"Spell: w" (the letters joined by '-') and "Upper: w" (in capitals). The words are the corpus's
lower-case words of 3 to 7 letters seen at least 5 times; a word belongs to validation when a hash of
it falls below val_fraction, so no held-out word is ever seen in training under any task. Every row
follows from the seed: the same files on every machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import random
import re

from moe.data.dataset import bundled_split
from moe.data.prepare import hash_split

TASKS = {
    "Reverse": lambda w: w[::-1],
    "Spell": lambda w: "-".join(w),
    "Upper": lambda w: w.upper(),
}


def words(min_count: int = 5) -> list[str]:
    """The bundled corpus's lower-case words of 3 to 7 letters seen at least min_count times, sorted."""
    train, _ = bundled_split(0.05)
    counts = collections.Counter(re.findall(r"\b[a-z]{3,7}\b", train.decode("utf-8")))
    return sorted(w for w, n in counts.items() if n >= min_count)


def rows(seed: int = 0, val_fraction: float = 0.1, per_word: int = 1) -> dict[str, list[dict]]:
    """{"train": [...], "val": [...]} conversations: per_word rows of each word, each a task drawn at random."""
    rng, out = random.Random(seed), {"train": [], "val": []}
    for w in words():
        for _ in range(per_word):
            task = rng.choice(sorted(TASKS))
            out[hash_split(w, val_fraction)].append(
                {
                    "messages": [
                        {"role": "user", "content": f"{task}: {w}"},
                        {"role": "assistant", "content": TASKS[task](w)},
                    ]
                }
            )
    for split in out.values():
        rng.shuffle(split)
    return out


def write(out_dir, **kw) -> dict[str, pathlib.Path]:
    """train.jsonl and val.jsonl in out_dir; returns their paths."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, conversations in rows(**kw).items():
        paths[split] = out_dir / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(c) + "\n" for c in conversations))
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory for train.jsonl and val.jsonl")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for split, path in write(args.out, seed=args.seed).items():
        print(f"wrote {path}: {sum(1 for _ in path.open())} {split} conversations")


if __name__ == "__main__":
    main()
