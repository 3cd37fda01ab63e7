"""Stage 2 measured: character error rate (CER) and caption loss of a vision run's final checkpoint on
500 held-out rendered lines, beside the two baselines measured the same way: the text-only model
without the image (it can only guess the line) and the multimodal model at initialisation (gates at
0: the text model's logits, reading the placeholder). The curve is the run's own: the loop measures
CER on 100 held-out lines at every evaluation (summary.json's history). Writes
vision_stage2.{json,md,png} and vision_grid.png (held-out images with the final model's transcriptions).

    python -m moe train --config tiny-vision --init-from runs/tiny --out runs/tiny-vision
    python -m bench.vision_cer --run runs/tiny-vision --text runs/tiny      # --out bench/results/<device>
"""

from __future__ import annotations

import json
import pathlib

from bench import harness
from moe.training import checkpoint, run_dir
from moe.vision.captions import CaptionDataset
from moe.vision.transcribe import caption_loss, cer, guess_lines, held_out, text_caption_loss, transcribe


def measure(model, lines, images) -> dict:
    predictions = transcribe(model, images)
    return {
        "cer": cer(predictions, lines),
        "caption_loss": caption_loss(model, lines, images),
        "predictions": predictions,
    }


def main(argv=None) -> dict:
    ap = harness.parser(__doc__)
    ap.add_argument("--run", required=True, help="the stage-2 run directory (its step-* checkpoints)")
    ap.add_argument("--text", required=True, help="the text checkpoint stage 2 started from")
    ap.add_argument("--lines", type=int, default=500)
    args = ap.parse_args(argv)
    out = run_dir.prepare(args.out)
    run = pathlib.Path(args.run)
    final = checkpoint.load_model(run)
    cfg = final.cfg
    lines, images = held_out(CaptionDataset.bundled(cfg.vision), args.lines)

    text = checkpoint.load_model(args.text).eval()
    guesses = guess_lines(text, len(lines))
    at_init = checkpoint.build_model(cfg)
    checkpoint.load_weights(at_init, args.text)
    baselines = {
        "text-only model, no image": {
            "cer": cer(guesses, lines),
            "caption_loss": text_caption_loss(text, lines),
            "example": guesses[0],
        },
        "multimodal model at initialisation": {
            k: v for k, v in measure(at_init, lines, images).items() if k != "predictions"
        },
    }
    summary = json.loads((run / "summary.json").read_text())
    h = summary["history"]
    curve = [
        {"step": st, "train_time_s": t, "cer_100": c, "val_loss": v}
        for st, t, c, v in zip(h["step"], h["train_time_s"], h.get("cer", []), h["val_loss"])
    ]
    last = measure(final, lines, images)
    print(f"final (step {summary['steps']}): CER {last['cer']:.3f}, caption loss {last['caption_loss']:.3f}")
    env = harness.stamp(False)
    result = {
        "setup": {
            **env,
            "config": cfg.name,
            "run": str(run),
            "text": args.text,
            "held_out_lines": len(lines),
            "train_time_s": summary["train_time_s"],
            "steps": summary["steps"],
            "gates": final.gates(),
        },
        "baselines": baselines,
        "final": {"cer": last["cer"], "caption_loss": last["caption_loss"]},
        "curve": curve,
        "examples": [{"truth": t, "read": p} for t, p in list(zip(lines, last["predictions"]))[:24]],
    }
    text = markdown(result)
    harness.write_result(
        out,
        "vision_stage2",
        result,
        text,
        by="bench.vision_cer",
        env=env,
        title="Reading rendered lines (vision stage 2)",
    )
    print(text)
    _plot(result, images, last["predictions"], lines, out)
    return result


def markdown(result: dict) -> str:
    setup, final = result["setup"], result["final"]
    rows = [f"| model | CER ({setup['held_out_lines']} held-out lines) | caption loss (nats/byte) |", "|---|---|---|"]
    rows += [f"| {name} | {b['cer']:.3f} | {b['caption_loss']:.3f} |" for name, b in result["baselines"].items()]
    rows += [
        f"| stage 2, {setup['steps']} steps ({setup['train_time_s']:.0f} s) | {final['cer']:.3f} | "
        f"{final['caption_loss']:.3f} |",
        "",
        "| step | training s | CER (100 held-out lines) | validation loss |",
        "|---|---|---|---|",
    ]
    rows += [
        f"| {c['step']} | {c['train_time_s']:.0f} | {c['cer_100']:.3f} | {c['val_loss']:.4f} |" for c in result["curve"]
    ]
    return "\n".join(rows) + "\n"


def _plot(result, images, predictions, lines, out) -> None:
    plt = harness.pyplot()
    curve = result["curve"]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [c["train_time_s"] for c in curve]
    ax.plot(x, [c["cer_100"] for c in curve], marker="o", label="stage 2 (100 held-out lines)")
    for (name, b), style in zip(result["baselines"].items(), ("--", ":")):
        ax.axhline(b["cer"], linestyle=style, color="gray", label=name)
    ax.axhline(0.10, color="red", linewidth=0.8, label="target: 10%")
    ax.set(
        xlabel="training seconds",
        ylabel="character error rate",
        ylim=(0, 1.05),
        title=f"{result['setup']['config']}: reading rendered lines",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    harness.save_figure(fig, out / "vision_stage2.png")
    n = 8
    fig, axes = plt.subplots(n, 1, figsize=(7, 0.75 * n))
    for i, ax in enumerate(axes):
        ax.imshow(images[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
        ax.set_title(f"read: {predictions[i]!r}   (truth: {lines[i]!r})", fontsize=7, loc="left", family="monospace")
    harness.save_figure(fig, out / "vision_grid.png", dpi=130)


if __name__ == "__main__":
    main()
