"""The architecture, checked: packages import one way, modules in no cycle, imports at the top,
argparse only in commands, heavy libraries loaded only when needed (docs/architecture.md)."""
from __future__ import annotations

import ast
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each package may import itself and the packages before it, never one after it.
LAYERS = ("kernels", "weights_tools", "decoder", "encoder")
# The only libraries imported inside functions, and why; everything else is imported at the top.
LAZY = {
    "onnxruntime": "the decoder's runtime: embedding, conversion and the kernels do without it",
    "onnx": "0.9 s to import: only to build graphs at conversion, and to read the VAD model once",
    "ml_dtypes": "0.5 s to import: only for bf16 data (the npu backend and its designs, bf16 checkpoints)",
    "av": "PyAV loads libav (0.13 s): only for formats soundfile cannot read",
    "torch": "test-only: the reference of the parity checks",
    "transformers": "test-only: the reference of the parity checks",
    "matplotlib": "optional (bench extra): the bench's chart",
    "faster_whisper": "optional (bench extra): a peer in the bench",
    "pyxrt": "XRT's binding: only on machines with an NPU",
    "huggingface_hub": "only to download a model, which needs internet",
    "aie": "mlir-aie's IRON: only where the NPU toolchain is installed",
    "sounddevice": "optional: the microphone of --live (needs PortAudio)",
    "ray": "optional (cluster extra): only archive jobs (encoder.batch) run on it",
}


@lru_cache(maxsize=1)
def modules() -> dict[str, ast.Module]:
    """Every module of the four packages by dotted name, parsed."""
    out = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return out


def _is_package(name: str) -> bool:
    return (ROOT / name.replace(".", "/") / "__init__.py").is_file()


def _target(name: str) -> str:
    """The project module an import of `name` loads last (a module, or the package it names)."""
    known = modules()
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports(module: str) -> list[tuple[str, ast.stmt, bool]]:
    """(imported name, statement, at module level) for every import in `module`; `from a import b`
    yields a.b when that is a module, else a."""
    tree, base = modules()[module], module if _is_package(module) else module.rpartition(".")[0]
    top = {id(node) for node in tree.body}
    top |= {id(n) for node in tree.body if isinstance(node, (ast.If, ast.Try)) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            prefix = base.rsplit(".", node.level - 1)[0] if node.level else ""
            source = ".".join(p for p in (prefix, node.module or "") if p)
            for alias in node.names:
                full = f"{source}.{alias.name}"
                out.append((full if full in modules() else source, node, id(node) in top))
    return out


def project_edges() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    edges = {m: set() for m in modules()}
    for module in modules():
        for name, _, _ in imports(module):
            if name.split(".")[0] in LAYERS:
                edges[module].add(_target(name))
    return edges


def test_packages_import_one_way():
    rank = {package: i for i, package in enumerate(LAYERS)}
    wrong = sorted(f"{module} imports {target}" for module, targets in project_edges().items() for target in targets
                   if rank[target.split(".")[0]] > rank[module.split(".")[0]])
    assert not wrong, "imports against the order " + " <- ".join(LAYERS) + ":\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules():
    edges, state, cycles = project_edges(), {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(edges[module]):
            if target == module:
                continue
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_imports_sit_at_the_top_of_modules():
    """Inside a function only the heavy optional libraries of LAZY; never a module of the project."""
    wrong = sorted(f"{module}:{node.lineno} imports {name} inside a function or class"
                   for module in modules() for name, node, top in imports(module)
                   if not top and name.split(".")[0] not in LAZY)
    assert not wrong, "\n".join(wrong)


def _is_command(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)


def test_argparse_only_in_commands():
    """Library modules take arguments, not command lines: argparse belongs to the commands (modules
    run with python -m) and to encoder.cli, which defines the options they share."""
    wrong = sorted(module for module, tree in modules().items()
                   if any(name == "argparse" for name, _, _ in imports(module))
                   and not _is_command(tree) and module != "encoder.cli")
    assert not wrong, f"argparse in library modules: {wrong}"


def test_heavy_libraries_wait_until_needed():
    """Starting the transcribe command (its module and everything it imports) loads none of LAZY."""
    code = "import sys, encoder.transcribe; print(' '.join(sorted(m for m in sys.modules if m in sys.argv[1:])))"
    r = subprocess.run([sys.executable, "-c", code, *LAZY], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [], f"loaded at start-up: {r.stdout}"


def test_the_checks_see_a_violation():
    """The helpers find what they look for (a checker that finds nothing proves nothing)."""
    edges = project_edges()
    assert "kernels.errors" in edges["encoder.model"] and "weights_tools.dims" in edges["decoder.session"]
    assert any(name == "onnxruntime" and not top for name, _, top in imports("decoder.session"))
    assert all(_is_command(modules()[m]) for m in ("encoder.transcribe", "weights_tools.__main__"))


def test_a_foreign_kernels_package_is_named_not_imported(tmp_path):
    """Another distribution's `kernels` (Hugging Face's, which transformers 5.25 and later require) is
    found before ours outside this directory: importing Amanuensis then says so in one line."""
    import os
    import subprocess
    import sys

    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    r = subprocess.run([sys.executable, "-c", "import encoder"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 1 and "is not Amanuensis's" in r.stderr and "pip uninstall kernels" in r.stderr
    r = subprocess.run([sys.executable, "-c", "import encoder"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
