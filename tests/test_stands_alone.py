"""The project stands alone: nothing a user receives points at the team's reference folder beside the repository
(a sibling directory named ``shared``), which users do not have."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("mtl_train", "configs", "docs", "scripts")
OUTSIDE_REFERENCE = "/".join(("..", "shared"))  # joined here so that this file does not itself cite it


def test_no_shipped_file_cites_files_outside_the_repository() -> None:
    files = [ROOT / "README.md", ROOT / "pyproject.toml"]
    files += [p for folder in SHIPPED for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".yaml", ".md", ".sh")]
    assert len(files) > 100
    assert [str(p.relative_to(ROOT)) for p in files if OUTSIDE_REFERENCE in p.read_text(encoding="utf-8")] == []
