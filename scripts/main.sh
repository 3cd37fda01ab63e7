#!/usr/bin/env bash
# The main job: set up, train the tiny preset on the bundled corpus (about 4 minutes on 2 CPU cores),
# sample from it, serve it under Poisson load (continuous batching), and print the GPT-4 figures table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m moe train --config tiny --out runs/tiny --overwrite
# how small models are usually shown: temperature 0.8 and the 20 most likely bytes (at 1.0 it reads as noise)
.venv/bin/python -m moe generate --checkpoint runs/tiny --prompt "ROMEO." --max-new-tokens 240 --seed 0 --temperature 0.8 --top-k 20
.venv/bin/python -m moe serve-bench --checkpoint runs/tiny --rate 8 --requests 24 --max-new-tokens 48
.venv/bin/python -m moe figures --config gpt4
