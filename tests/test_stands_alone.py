"""The project stands alone: nothing a user receives points at reference material outside the repository."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("mtl_train", "configs", "docs", "scripts")


def test_no_shipped_file_cites_files_outside_the_repository() -> None:
    files = [ROOT / "README.md", ROOT / "pyproject.toml"]
    files += [p for folder in SHIPPED for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".yaml", ".md", ".sh")]
    assert len(files) > 100
    assert [str(p.relative_to(ROOT)) for p in files if "../shared" in p.read_text(encoding="utf-8")] == []
