"""The experiments: each module measures one thing and writes its result under bench/results/<device>/.

    python -m bench.compare_dense --help

They run from the repository root (this package is not installed with `moe`); every one writes its
figures through `bench.harness.write_result`, so each result is a JSON file stamped with the device,
versions and date, and a Markdown table generated from the same data.
"""
