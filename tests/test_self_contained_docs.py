"""Docstrings, comments and READMEs explain themselves: none cites a design document that is not
in the repository (the project's working notes: design, anchors, perf and style files)."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = (".py", ".md", ".sh", ".toml", ".txt")
SKIPPED_DIRS = {".git", ".venv", "build", "dist", "__pycache__", "out", "runs"}
# A notes name followed by ".md", a section sign or "section"; or a path into the notes folder.
NOTES = "|".join(["DESIGN", "ANCHORS", "PERF", "STYLE"])
CITATION = re.compile(rf"\b({NOTES})(\.md\b|\s*\u00a7|\s+section\b)|shared/({NOTES})")


def scanned_files():
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        for name in files:
            if name.endswith(SCANNED):
                yield os.path.join(folder, name)


def test_no_text_cites_a_document_outside_the_repository():
    present = {name for _, _, files in os.walk(ROOT) for name in files if name.endswith(".md")}
    citing = []
    for path in scanned_files():
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                match = CITATION.search(line)
                if match and f"{match.group(1) or match.group(3)}.md" not in present:
                    citing.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
    assert not citing, "cites a document not in the repository:\n" + "\n".join(citing)
