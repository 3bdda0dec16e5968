"""vltool.io: a file or folder is replaced whole or not at all, and a failed writer leaves the old one."""

import pytest

from vltool.io import move_into_place, staged_directory, write_atomically


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "sub" / "results.csv"
    write_atomically(path, lambda temporary: temporary.write_text("old"))
    assert path.read_text() == "old"

    def fail(temporary):
        assert temporary.suffix == ".csv" and temporary.parent == path.parent  # the format and the folder kept
        temporary.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(path, fail)
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["results.csv"]


def test_a_folder_replaces_a_folder_and_nothing_is_left_aside(tmp_path):
    final = tmp_path / "adapters"
    with staged_directory(final) as staged:
        (staged / "a.txt").write_text("1")
    with staged_directory(final) as staged:
        (staged / "b.txt").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapters"]
    with pytest.raises(ValueError), staged_directory(final) as staged:
        (staged / "c.txt").write_text("3")
        raise ValueError("conversion failed")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapters"]


def test_a_file_or_folder_replaces_the_other_kind(tmp_path):
    final = tmp_path / "iter_2.pth"
    final.mkdir()
    (final / "shard.pt").write_text("old")
    staged = tmp_path / ".iter_2.pth.tmp"
    staged.write_text("new")
    assert move_into_place(staged, final)
    assert final.read_text() == "new" and not staged.exists()


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_without_replace_the_first_one_published_stays(tmp_path, kind):
    final, staged = tmp_path / "store", tmp_path / ".store.tmp"
    for path, text in ((final, "first"), (staged, "second")):
        if kind == "folder":
            path.mkdir()
            (path / "manifest.json").write_text(text)
        else:
            path.write_text(text)
    assert not move_into_place(staged, final, replace=False)
    assert (final / "manifest.json" if kind == "folder" else final).read_text() == "first" and not staged.exists()
    assert move_into_place(final, tmp_path / "elsewhere", replace=False) and (tmp_path / "elsewhere").exists()
