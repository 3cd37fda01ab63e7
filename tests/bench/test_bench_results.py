"""The committed results stay readable: each experiment renders its Markdown from the JSON it
committed under bench/results/cpu-2core, and the tables come out as committed."""

import importlib
import json
import pathlib

import pytest

RESULTS = pathlib.Path(__file__).resolve().parents[2] / "bench" / "results" / "cpu-2core"


def _tables(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


@pytest.mark.parametrize(
    "module, name",
    [
        ("compare_dense", "moe_vs_dense"),
        ("compare_dense", "moe_vs_dense_batch32"),
        ("compare_tokenizers", "tokenizers"),
        ("quantized_serving", "quantized"),
        ("serving", "serving"),
        ("vision_cer", "vision_stage2"),
        ("vision_cer", "vision_stage2_flamingo"),
        ("long_context", "long_context"),
        ("vision_probe", "vision_probe"),
        ("main_job", "main_job"),
        ("vs_transformers", "vs_transformers"),
        ("serve_layouts", "serve_layouts"),
        ("pipeline_bubble", "pipeline_bubble"),
        ("instruct", "instruct"),
        ("granularity", "granularity"),
    ],
)
def test_a_committed_result_renders_from_its_json(module, name):
    markdown = importlib.import_module(f"bench.{module}").markdown
    text = markdown(json.loads((RESULTS / f"{name}.json").read_text()))
    assert _tables(text)
    committed = RESULTS / f"{name}.md"
    if committed.exists():  # written before its experiment wrote Markdown: only the JSON is committed
        assert _tables(text) == _tables(committed.read_text())


def test_the_main_job_sample_is_what_generate_printed():
    from bench.main_job import sample_of

    out = "\n".join(
        ["training tiny -> runs/tiny", "done: step 1000, checkpoint x", "ROMEO.", "Sir,", "", "serve-bench tiny"]
    )
    assert sample_of(out) == "ROMEO.\nSir,"
