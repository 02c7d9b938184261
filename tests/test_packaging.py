"""What the wheel ships besides code: the license text and a long description that opens for pip users."""
import os

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def project_table():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_license_file_is_the_apache_2_text_and_ships_in_the_wheel():
    pyproject = project_table()
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert pyproject["project"]["license-files"] == ["LICENSE"]
    with open(os.path.join(ROOT, "LICENSE")) as f:
        text = f.read()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_long_description_opens_with_pip_lines_then_the_readme():
    readme = project_table()["tool"]["setuptools"]["dynamic"]["readme"]
    first, *rest = readme["file"]
    assert rest == ["README.md"]
    with open(os.path.join(ROOT, first)) as f:
        opening = f.read()
    before_setup_sh = opening.split("./setup.sh")[0]
    assert "pip install spanbert-fast" in before_setup_sh
