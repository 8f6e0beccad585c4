"""No installed module grows past 500 lines: past that a module holds more than one job, and a
newcomer should find a behaviour from the module's name. Split along the jobs instead."""

from __future__ import annotations

from load_tests import REPO_ROOT

INSTALLED = ("eluserve", "service", "export", "models")
MAX_LINES = 500


def test_no_installed_module_is_over_500_lines() -> None:
    sizes = {
        str(path.relative_to(REPO_ROOT)): len(path.read_text().splitlines())
        for folder in INSTALLED
        for path in (REPO_ROOT / folder).rglob("*.py")
    }
    assert len(sizes) > 50  # the scan sees the package
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
