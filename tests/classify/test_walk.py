"""Walking files and folders: recursion, hidden entries, extensions, symlink loops, laziness."""

from __future__ import annotations

import os
from pathlib import Path

from eluserve.classify.files import DEFAULT_EXTENSIONS, iter_image_files, parse_extensions
from tests.classify.conftest import Tree

IMAGES = frozenset(DEFAULT_EXTENSIONS)


def walk(*roots: Path | str, recursive: bool = True, extensions: frozenset[str] = IMAGES) -> list[str]:
    return list(iter_image_files([str(root) for root in roots], extensions, recursive=recursive))


def test_finds_every_image_once_despite_symlink_loops(tree: Tree) -> None:
    found = [os.path.relpath(path, tree.root) for path in walk(tree.root)]
    assert sorted(found) == sorted(tree.expected)


def test_no_recursive_stays_in_the_folder(tree: Tree) -> None:
    found = walk(tree.root / "nested", tree.root / "bad", recursive=False)
    top_level = {"nested/photo.JPG", "nested/rgba.png", "nested/pic.webp"}
    bad = {key for key in tree.expected if key.startswith("bad/")}
    assert {os.path.relpath(p, tree.root) for p in found} == top_level | bad


def test_extensions_are_case_insensitive_and_configurable(tree: Tree) -> None:
    found = walk(tree.root / "nested", extensions=parse_extensions(".JPG, webp"))
    assert sorted(os.path.relpath(p, tree.root) for p in found) == ["nested/photo.JPG", "nested/pic.webp"]


def test_named_files_are_taken_whatever_their_name(tree: Tree) -> None:
    hidden = tree.root / ".hidden" / "secret.jpg"
    notes = tree.root / "notes.txt"
    assert walk(hidden, notes) == [str(hidden), str(notes)]


def test_a_folder_reached_twice_is_walked_once(tree: Tree) -> None:
    once = walk(tree.root / "cifar")
    assert walk(tree.root / "cifar", tree.root / "loop" / "cifar") == once


def test_fifos_are_skipped_not_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "real.jpg").write_bytes(b"x")
    assert walk(tmp_path) == [str(tmp_path / "real.jpg")]


def test_walking_is_lazy(tmp_path: Path) -> None:
    """The first file comes out before later folders are listed: nothing is collected up front."""
    for i in range(3):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "a.jpg").write_bytes(b"x")
    files = iter_image_files([str(tmp_path)], IMAGES)
    first = next(files)
    for folder in tmp_path.iterdir():
        if folder.name != Path(first).parent.name:
            (folder / "a.jpg").unlink()
            folder.rmdir()
    assert list(files) == []
