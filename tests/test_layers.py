"""The house's floors: imports go only downward (import-linter's layers contract in
``.importlinter``), no module imports itself back through others, and no module grows past
500 lines. A new upward import or circle fails here, in the default tier."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "hbl_mpi"


def test_layers_contract_is_kept():
    import importlinter  # noqa: F401 (the test extra installs it: a missing one fails, never skips)
    # the CLI itself (its API needs the CLI's set-up): exit 0 when every contract is kept
    code = "from importlinter.cli import lint_imports_command as c; c(['--no-cache', '--no-logo'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def test_the_contract_names_every_sub_package():
    text = (ROOT / ".importlinter").read_text()
    layers = {name.strip() for line in text.split("layers =", 1)[1].splitlines() for name in line.split("|")
              if name.strip().startswith("hbl_mpi.")}
    subpackages = {f"hbl_mpi.{p.name}" for p in PKG.iterdir() if (p / "__init__.py").is_file()}
    top_modules = {f"hbl_mpi.{p.stem}" for p in PKG.glob("*.py") if p.stem not in ("__init__",)}
    assert subpackages <= layers, f"sub-packages missing from the layers contract: {sorted(subpackages - layers)}"
    assert top_modules <= layers, f"top-level modules missing from the layers contract: {sorted(top_modules - layers)}"


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.find_modules_directly_imported_by(w)))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_no_import_circles_between_modules():
    import grimp  # installed with import-linter
    sys.path.insert(0, str(ROOT))
    graph = grimp.build_graph("hbl_mpi", cache_dir=None)  # function-level imports count too
    assert _cycles(graph) == []


def test_no_module_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}, f"modules over 500 lines (split them by job): {long}"
