"""The shape of the code: which wing may import which, no import circles, the public API, and a
non-editable install that finds its presets from any directory.

Imports are read statically from every .py file of moe/ and kernels/ (module-level and the lazy ones
inside functions), so a circle closed by a lazy import counts as one."""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
STDLIB = set(sys.stdlib_module_names)


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for pkg in ("moe", "kernels") for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The modules `name` imports, resolved to modules where `from package import submodule`."""
    out = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES else node.module)
    return out


def _ours(names):
    return {n for n in names if n.split(".")[0] in ("moe", "kernels")}


def test_the_static_reading_sees_the_imports():
    # guards the guard: a reading that found nothing would pass every test below
    assert "moe.model.router" in imports_of("moe.model.moe_layer")
    assert "moe.training.checkpoint" in imports_of("moe.training.local")  # from moe.training import checkpoint
    assert "moe.parallel.pipeline" in imports_of("moe.parallel.trainer")  # a lazy import inside a method


def test_no_import_circles():
    graph = {m: _ours(imports_of(m)) & set(MODULES) for m in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n) :] + [n]
                pytest.fail(f"import circle: {' -> '.join(cycle)}")
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m, [m])


def _wing(prefix):
    return [m for m in MODULES if m == prefix or m.startswith(prefix + ".")]


@pytest.mark.parametrize(
    "wing, forbidden",
    [  # the README's architecture list: no entry imports one below it
        ("kernels", ("moe",)),
        ("moe.files", ("moe", "kernels")),
        ("moe.checksums", ("moe", "kernels")),
        ("moe.devices", ("moe", "kernels")),
        (
            "moe.estimates",
            (
                "moe.model",
                "moe.data",
                "moe.vision",
                "moe.training",
                "moe.serving",
                "moe.parallel",
                "moe.profiling",
                "kernels",
            ),
        ),
        (
            "moe.model",
            ("moe.testing", "moe.data", "moe.vision", "moe.training", "moe.serving", "moe.parallel", "moe.profiling"),
        ),
        ("moe.testing", ("moe.data", "moe.vision", "moe.training", "moe.serving", "moe.parallel", "moe.profiling")),
        ("moe.data", ("moe.model", "moe.vision", "moe.training", "moe.serving", "moe.parallel", "moe.profiling")),
        ("moe.vision", ("moe.training", "moe.serving", "moe.parallel", "moe.profiling")),
        ("moe.training", ("moe.serving", "moe.parallel", "moe.profiling")),
        ("moe.serving", ("moe.training", "moe.parallel", "moe.profiling")),
        ("moe.parallel", ("moe.profiling",)),
    ],
)
def test_wings_import_one_way(wing, forbidden):
    for m in _wing(wing):
        bad = {n for n in imports_of(m) if n.split(".")[0] in forbidden or n.startswith(forbidden)}
        assert not bad, f"{m} imports {sorted(bad)}"


def test_nothing_in_moe_or_kernels_imports_bench():  # bench/ measures the library and sits on top of it
    bad = {m: sorted(n for n in imports_of(m) if n.split(".")[0] == "bench") for m in MODULES}
    assert not {m: b for m, b in bad.items() if b}


def test_kernels_import_only_torch_and_triton():
    for m in _wing("kernels"):
        other = {n for n in imports_of(m) if n.split(".")[0] not in STDLIB | {"torch", "triton", "kernels"}}
        assert not other, f"{m} imports {sorted(other)}"


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_importing_kernels_or_the_model_loads_nothing_it_must_not():
    assert not {m for m in _loaded_after("import kernels") if m.split(".")[0] == "moe"}
    loaded = _loaded_after("import moe.model")
    assert not {m for m in loaded if m.startswith(("moe.parallel", "moe.training", "moe.serving"))}


def test_config_and_estimates_import_no_torch():
    code = (
        "import sys, moe, moe.config, moe.layout, moe.estimates.report as report, moe.estimates.cluster as X; "
        "import moe.hf_families; "
        "report.print_figures(moe.load_config('gpt4'), moe.layout.parse_layout('tp=8,pp=15,dp=208')); "
        "report.print_figures(moe.load_config('gpt-oss-120b')); "
        "X.train_estimate(moe.load_config('gpt4'), X.GPUS['A100'], 25000, 0.05); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_public_name_resolves():
    import moe

    for name in moe.__all__:
        assert getattr(moe, name) is not None, name
    from moe.model import MoETransformer
    from moe.serving import Engine

    assert moe.MoETransformer is MoETransformer and moe.Engine is Engine


def test_a_plain_install_finds_its_presets_from_any_directory(tmp_path):
    """`pip install .` (not editable) ships configs/ inside the package: load a preset and print the
    figures from another directory, with the repository out of sys.path."""
    target = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    assert sorted(p.name for p in (target / "moe" / "presets").glob("*.toml")) == sorted(
        p.name for p in (ROOT / "configs").glob("*.toml")
    )
    prelude = f"import sys; sys.path.insert(0, {str(target)!r}); "  # -S: no site-packages, no editable install
    run = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            prelude + "import moe.config as c; print(c.CONFIG_DIR); print(c.load_config('tiny').d_model)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(target / "moe" / "presets"), "128"]
    cli = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            prelude + "from moe.__main__ import main; sys.exit(main(['figures', '--config', 'tiny']))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert cli.returncode == 0, cli.stderr
    assert "config 'tiny'" in cli.stdout


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's Python API block, as written (it trains 20 steps of a 2-layer tiny)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["summary"]["steps"] == 20 and (tmp_path / "runs" / "mine" / "latest").exists()
    assert len(namespace["engine"].results[namespace["rid"]].tokens) == 100
