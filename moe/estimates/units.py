"""How the estimate tables print numbers: SI prefixes, binary byte units, aligned text tables.
Imports no torch."""

from __future__ import annotations


def si(x: float, unit: str = "") -> str:
    """1.8e12 -> '1.8 T', with an optional unit: si(5.6e11, 'FLOP') -> '560 GFLOP'."""
    x = float(f"{x:.3g}")  # round first, so 999,672 is '1 M', not '1e+03 k'
    for scale, prefix in (
        (1e24, "Y"),
        (1e21, "Z"),
        (1e18, "E"),
        (1e15, "P"),
        (1e12, "T"),
        (1e9, "G"),
        (1e6, "M"),
        (1e3, "k"),
    ):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}".rstrip()
    return f"{x:.3g} {unit}".rstrip()


def binary_bytes(x: float) -> str:
    """A byte count in KiB, MiB, GiB or TiB (powers of 1024)."""
    for scale, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.0f} B"


def format_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """Columns padded to their widest cell; the last column is left ragged."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for r in [header, tuple("-" * w for w in widths) + ("-" * len(header[-1]),), *rows]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) + "  " + str(r[-1]))
    return "\n".join(lines)
