"""The main job, timed: run `bash scripts/main.sh` from this checkout and record how long it took, what
the training reached and the sample it printed (the README's headline for the two commands).

    python -m bench.main_job            # ~5 minutes on 2 cores; writes bench/results/<device>/main_job.*

The training is a fixed number of steps (configs/tiny.toml), so another machine reaches the same
loss and prints the same kind of sample; only the times change.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import time

from bench.harness import parser, stamp, write_result

ROOT = pathlib.Path(__file__).resolve().parents[1]


def sample_of(stdout: str) -> str:
    """The text `generate` printed: between training's last line and serve-bench's report."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("done: step")) + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("serve-bench "))
    return "\n".join(lines[start:end]).strip("\n")


def markdown(result: dict) -> str:
    return (
        "| whole job | training | steps | tokens/s | validation (nats/byte) |\n|---|---|---|---|---|\n"
        f"| {result['wall_s'] / 60:.1f} min | {result['train_time_s']:.0f} s | {result['steps']:,} | "
        f"{result['tokens_per_s']:,} | {result['final_val_loss_nats_per_byte']:.3f} |\n\n"
        "The sample (`generate --prompt ROMEO. --seed 0 --temperature 0.8 --top-k 20`):\n\n"
        "```\n" + result["sample"] + "\n```\n"
    )


def main(argv=None) -> None:
    args = parser(__doc__).parse_args(argv)
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", "scripts/main.sh"], cwd=ROOT, capture_output=True, text=True)
    wall_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"scripts/main.sh failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((ROOT / "runs" / "tiny" / "summary.json").read_text())
    result = {
        "environment": stamp(),
        "wall_s": round(wall_s, 1),
        "train_time_s": summary["train_time_s"],
        "steps": summary["steps"],
        "tokens": summary["tokens"],
        "tokens_per_s": summary["tokens_per_s"],
        "final_val_loss_nats_per_byte": round(summary["final_val_loss"], 4),
        "sample": sample_of(proc.stdout),
    }
    js, _ = write_result(args.out, "main_job", result, markdown(result), by="bench.main_job", title="The main job")
    print(f"main job: {wall_s / 60:.1f} min, val {result['final_val_loss_nats_per_byte']:.3f} nats/byte -> {js}")


if __name__ == "__main__":
    main()
