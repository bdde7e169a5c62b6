"""The README stays short, its headline numbers come from results/summary.json, and its links resolve."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 220
SESSION = re.compile(r"\bsessions? \d+", re.IGNORECASE)


def _readme_table():
    spec = importlib.util.spec_from_file_location("readme_table_script", ROOT / "experiments/readme_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _docs() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "paper/crosshost.md"]


def test_headline_table_matches_committed_summary():
    rt = _readme_table()
    summary = json.loads((ROOT / "results/summary.json").read_text())
    want = rt.render(summary)
    got = rt.current_block(README.read_text())
    assert got == want, "README.md's headline results are stale: run `python experiments/readme_table.py`"
    assert rt.main(["--check", "--readme", str(README), "--summary", str(ROOT / "results/summary.json")]) == 0


def test_headline_table_shows_every_main_method_with_seeds():
    rt = _readme_table()
    summary = json.loads((ROOT / "results/summary.json").read_text())
    block = rt.render(summary)
    uniapl = summary["rows"]["student-s"]["uniapl"]["in_domain"]["prompt_strict"]
    assert f"{uniapl['mean'] * 100:.1f} ± {uniapl['std'] * 100:.1f}" in block
    for m in ["teacher", "base", "grpo", "sft->grpo", "uniapl"]:
        assert f"\n| {m} |" in block
    assert "UniAPL beats GRPO" in block


def test_check_reports_a_stale_readme_and_write_fixes_it(tmp_path, capsys):
    rt = _readme_table()
    summary = tmp_path / "summary.json"
    summary.write_text((ROOT / "results/summary.json").read_text())
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{rt.START}\n| old | table |\n{rt.END}\n\nafter\n")
    args = ["--readme", str(readme), "--summary", str(summary)]
    assert rt.main([*args, "--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert "| old | table |" in readme.read_text()  # --check never writes
    assert rt.main(args) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\n") and text.endswith("\nafter\n") and "| old | table |" not in text
    assert rt.main([*args, "--check"]) == 0


def test_splice_needs_exactly_one_pair_of_markers():
    rt = _readme_table()
    with pytest.raises(ValueError):
        rt.splice("no markers here\n", "x\n")
    with pytest.raises(ValueError):
        rt.splice(f"{rt.END}\n{rt.START}\n", "x\n")
    with pytest.raises(ValueError):
        rt.splice(f"{rt.START}\n{rt.END}\n{rt.START}\n{rt.END}\n", "x\n")


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines (at most {MAX_LINES}); move details to docs/"


def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file: lower case, punctuation dropped, spaces -> hyphens."""
    heads = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", md.read_text(), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("doc", _docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    text, bad = doc.read_text(), []
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):
            continue  # https:, mailto: ...
        path, _, anchor = link.partition("#")
        target = doc.parent / path if path else doc
        if not target.exists():
            bad.append(f"{link} (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            bad.append(f"{link} (no such heading)")
    assert not bad, f"{doc.relative_to(ROOT)} has broken links: {bad}"


def test_readme_links_every_doc():
    text = README.read_text()
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{doc.name})" in text, f"README.md does not link docs/{doc.name}"


@pytest.mark.parametrize("doc", _docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_hosts_are_named_by_cpu_not_by_work_session(doc):
    hits = [line.strip() for line in doc.read_text().splitlines() if SESSION.search(line)]
    assert not hits, f"{doc.relative_to(ROOT)} names a work session instead of a host (CPU, flags, date): {hits}"


def test_readme_deviations_table_is_the_reports():
    """The README's deviations table is paper/deviations.md's (which the report prints), row for row."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deviations and guesses", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    report_rows = [line for line in (ROOT / "paper" / "deviations.md").read_text().splitlines() if line.startswith("|")]
    assert rows == report_rows
