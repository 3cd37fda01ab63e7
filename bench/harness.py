"""What every experiment shares: where its results go, the stamp beside them, and one way to write them.

A result is written once, by the script that measured it: `<name>.json` (the data, with the
environment it was measured in) and `<name>.md` (a table generated from that data). Nothing else in
the repository copies a measured figure; the README links to these files.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import torch

from moe.files import check_plain_name
from moe.profiling.timing import device_slug, environment

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def default_out(cuda: bool | None = None) -> pathlib.Path:
    """bench/results/<device>: 'cpu-2core', 'nvidia-h100-80gb-hbm3'."""
    return RESULTS / device_slug(torch.cuda.is_available() if cuda is None else cuda)


def stamp(cuda: bool | None = None) -> dict:
    """Device, versions and date (see moe.profiling.timing.environment)."""
    return environment(torch.cuda.is_available() if cuda is None else cuda)


def host() -> dict:
    """torch version, threads, processor and date: the keys some results carry at their top level."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }


def parser(doc: str) -> argparse.ArgumentParser:
    """An experiment's command line: its module docstring as --help, and --out (the results folder,
    bench/results/<device> unless given)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=pathlib.Path, default=default_out(), help="results folder (default: %(default)s)")
    return p


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A GitHub table of dict rows; columns default to the first row's keys, floats to 4 significant digits."""
    if not rows:
        return "(no rows)\n"
    columns = columns or list(rows[0])

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_result(
    out: pathlib.Path | str,
    name: str,
    result: dict,
    markdown: str,
    *,
    by: str,
    title: str | None = None,
    env: dict | None = None,
) -> tuple[pathlib.Path, pathlib.Path]:
    """Write out/<name>.json (result plus its stamp under 'environment') and out/<name>.md (title, the
    stamp, which module wrote it (`by`, e.g. 'bench.compare_dense'), then `markdown`, which the caller
    generates from `result`). Returns both paths."""
    check_plain_name(name, "result name")
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = env or result.get("environment") or stamp()
    data = {"environment": env, **{k: v for k, v in result.items() if k != "environment"}}
    js, md = out / f"{name}.json", out / f"{name}.md"
    js.write_text(json.dumps(data, indent=1) + "\n")
    head = f"# {title or name}\n\n" + ", ".join(f"{k} {v}" for k, v in env.items() if v is not None)
    md.write_text(
        f"{head}\n\nWritten by `python -m {by}`; the data: [`{js.name}`]({js.name}).\n\n" + markdown.rstrip() + "\n"
    )
    return js, md


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, imported only by the scripts that plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: pathlib.Path | str, dpi: int = 110) -> None:
    """Lay out, write and close a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
