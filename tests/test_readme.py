"""The README and the docs stay true: the README is a first page whose test command CI runs;
docs/configuration.md's key table matches the config declarations; docs/architecture.md's
layers are the import-linter contract's and its paths exist; every relative link and
anchor in the Markdown files resolves."""

import re
import subprocess
from pathlib import Path

from hbl_mpi.core.config import readme_key_table

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_configuration_doc_documents_every_config_key():
    doc = (ROOT / "docs/configuration.md").read_text()
    for line in readme_key_table().splitlines():
        assert line in doc, f"docs/configuration.md key table is stale; missing: {line}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    first_blocks = readme.split("<!-- test-command -->", 1)
    assert len(first_blocks) == 2
    cmd = first_blocks[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    assert "pytest" in cmd and "torch==2.13.0" in cmd
    ci = (ROOT / ".ci/run").read_text()
    assert "test-command" in ci
    assert subprocess.run(["bash", "-n", str(ROOT / ".ci/run")]).returncode == 0


def test_readme_is_a_first_page_that_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 120, f"README.md has {len(lines)} lines; the reference belongs in docs/"
    first_section = next(i for i, line in enumerate(lines) if line.startswith("## "))
    assert lines.index("<!-- demo-command -->") < lines.index("<!-- test-command -->") < first_section
    text = "\n".join(lines)
    for term in ("node", "stage", "N", "S", "resist", "impact", "row-epochs"):
        assert f"| **{term}** |" in text, f"the README's glossary lacks {term!r}"
    assert "docs/img/report.png" in text


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|<[^>]+>", "", heading.strip()).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not re.match(r"#{1,6} ", line):
            continue
        slug = _slug(line.lstrip("#"))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_doc_links_and_anchors_resolve():
    broken = []
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked offline
            file_part, _, anchor = target.partition("#")
            path = (doc.parent / file_part).resolve() if file_part else doc
            if not path.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def _block_after(text: str, marker: str) -> list[str]:
    after = text.split(marker, 1)[1]
    return after.split("```\n", 1)[1].split("\n```", 1)[0].splitlines()


def test_architecture_doc_lists_the_import_linter_layers():
    contract = (ROOT / ".importlinter").read_text().split("layers =", 1)[1]
    layers = []
    for line in contract.splitlines()[1:]:
        if not line.startswith((" ", "\t")) or not line.strip():
            break
        layers.append(" | ".join(name.strip() for name in line.split("|")))
    doc = (ROOT / "docs/architecture.md").read_text()
    shown = [" | ".join(n.strip() for n in line.split("|")) for line in _block_after(doc, "<!-- layers")]
    assert shown == layers, "docs/architecture.md's layer list differs from .importlinter's layers contract"


def test_architecture_doc_names_only_files_that_exist():
    doc = (ROOT / "docs/architecture.md").read_text()
    paths = set(re.findall(r"`((?:hbl_mpi|tests|bench|docs|jobs)/[\w./-]+)`", doc))
    assert len(paths) > 30
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"
