"""Output files and folders: never over an input, never over a non-empty file without --force,
never through a symbolic link, private whatever the umask; inputs: regular files only."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipcproxy.inputs import InputFileError, open_input, read_text
from ipcproxy.outputs import (
    PRIVATE,
    OutputError,
    OutputRules,
    folder_mode,
    make_folder,
    open_file,
    parse_mode,
    write_file,
)
from ipcproxy.trace.writer import DirectJsonlWriter, JsonlWriter


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def write_with(path: Path, rules: OutputRules = PRIVATE) -> None:
    write_file(str(path), lambda stream: stream.write(b"new\n"), rules)


def test_new_files_are_private_under_umask_022(tmp_path: Path) -> None:
    os.close(open_file(str(tmp_path / "t.jsonl")))
    write_with(tmp_path / "p.yaml")
    assert mode_of(tmp_path / "t.jsonl") == 0o600
    assert mode_of(tmp_path / "p.yaml") == 0o600
    assert make_folder(str(tmp_path / "out"))
    assert mode_of(tmp_path / "out") == 0o700


def test_output_mode_widens_files_and_folders_get_matching_x_bits(tmp_path: Path) -> None:
    rules = OutputRules(mode=0o640)
    os.close(open_file(str(tmp_path / "t.jsonl"), rules))
    assert mode_of(tmp_path / "t.jsonl") == 0o640
    make_folder(str(tmp_path / "out"), rules)
    assert mode_of(tmp_path / "out") == 0o750
    assert folder_mode(0o644) == 0o755


@pytest.mark.parametrize("text", ["0600", "640", "0644"])
def test_parse_mode_accepts_octal(text: str) -> None:
    assert parse_mode(text) == int(text, 8)


@pytest.mark.parametrize("text", ["rw", "0400", "01777", "9"])
def test_parse_mode_refuses_what_is_not_a_usable_mode(text: str) -> None:
    with pytest.raises(Exception, match=repr(text)):
        parse_mode(text)


def test_existing_non_empty_file_refused_then_replaced_with_force(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("precious\n")
    for create in (lambda r: os.close(open_file(str(target), r)), lambda r: write_with(target, r)):
        with pytest.raises(OutputError, match=r"notes.txt: it exists and is not empty; give --force"):
            create(OutputRules())
        assert target.read_text() == "precious\n"
    write_with(target, OutputRules(force=True))
    assert target.read_text() == "new\n"
    assert mode_of(target) == 0o600


def test_existing_empty_file_is_used(tmp_path: Path) -> None:
    target = tmp_path / "t.jsonl"
    target.touch()
    os.close(open_file(str(target)))
    assert mode_of(target) == 0o600


def test_symlink_at_the_output_path_is_not_followed_even_with_force(tmp_path: Path) -> None:
    mine = tmp_path / "mine.txt"
    mine.write_text("keep me\n")
    link = tmp_path / "t.jsonl"
    link.symlink_to(mine)
    dangling = tmp_path / "d.jsonl"
    dangling.symlink_to(tmp_path / "nowhere")
    for path in (link, dangling):
        for rules in (OutputRules(), OutputRules(force=True)):
            with pytest.raises(OutputError, match="is a symbolic link"):
                os.close(open_file(str(path), rules))
            with pytest.raises(OutputError, match="is a symbolic link"):
                write_with(path, rules)
    assert mine.read_text() == "keep me\n"
    assert mode_of(mine) == 0o644
    assert not (tmp_path / "nowhere").exists()


def test_an_input_is_never_an_output_whatever_its_spelling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text("input\n")
    (tmp_path / "hard.jsonl").hardlink_to(trace)
    (tmp_path / "link.jsonl").symlink_to(trace)
    monkeypatch.chdir(tmp_path)
    rules = OutputRules.make(force=True, inputs=["link.jsonl"])
    for out in (str(trace), "t.jsonl", "./t.jsonl", "hard.jsonl"):
        with pytest.raises(OutputError, match="is also an input of this command"):
            write_with(Path(out), rules)
        with pytest.raises(OutputError, match="is also an input of this command"):
            os.close(open_file(out, rules))
    assert trace.read_text() == "input\n"


def test_missing_folder_and_folder_as_file_are_one_line_in_words(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"^cannot write .*/no/x.jsonl: no such folder"):
        os.close(open_file(str(tmp_path / "no" / "x.jsonl")))
    with pytest.raises(OutputError, match=r"^cannot write .*/no/p.yaml: no such folder"):
        write_with(tmp_path / "no" / "p.yaml")
    with pytest.raises(OutputError, match="it is a folder"):
        os.close(open_file(str(tmp_path)))


def test_devices_are_written_as_they_are(tmp_path: Path) -> None:
    before = os.stat("/dev/null")
    os.close(open_file("/dev/null"))
    write_file("/dev/null", lambda s: s.write(b"x"))
    assert stat.S_IMODE(os.stat("/dev/null").st_mode) == stat.S_IMODE(before.st_mode)


def test_folders_empty_used_non_empty_refused_unless_reusable_or_forced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert not make_folder(str(out))
    (out / "x").write_text("x")
    with pytest.raises(OutputError, match="out as the output folder: it exists and is not empty; give --force"):
        make_folder(str(out))
    assert not make_folder(str(out), reusable=lambda _: True)
    assert not make_folder(str(out), OutputRules(force=True))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="^cannot use .*file as the output folder: it is a file$"):
        make_folder(str(a_file))
    (tmp_path / "link").symlink_to(out)
    with pytest.raises(OutputError, match="symbolic link"):
        make_folder(str(tmp_path / "link"), OutputRules(force=True))
    with pytest.raises(OutputError, match="no such folder"):
        make_folder(str(tmp_path / "no" / "out"))


@pytest.mark.parametrize("writer", [JsonlWriter, DirectJsonlWriter])
def test_trace_writers_are_private_and_refuse_links(tmp_path: Path, writer: type) -> None:
    path = tmp_path / "t.jsonl"
    w = writer(str(path), {"format": "ipcproxy-trace", "version": 1})
    w.close()
    assert mode_of(path) == 0o600
    assert path.read_text().startswith('{"format":"ipcproxy-trace"')
    with pytest.raises(OutputError, match="exists and is not empty"):
        writer(str(path), {"format": "ipcproxy-trace", "version": 1})
    link = tmp_path / "l.jsonl"
    link.symlink_to(path)
    with pytest.raises(OutputError, match="symbolic link"):
        writer(str(link), {"format": "ipcproxy-trace", "version": 1}, rules=OutputRules(force=True))


def test_inputs_must_be_regular_files_and_a_fifo_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "f.yaml"
    os.mkfifo(fifo)
    with pytest.raises(InputFileError, match=r"cannot read policy .*f.yaml: it is a FIFO, not a regular file"):
        open_input(str(fifo), "policy")  # no writer: a plain open would wait for ever
    with pytest.raises(InputFileError, match="it is a device, not a regular file"):
        open_input("/dev/zero", "trace")
    with pytest.raises(InputFileError, match="it is a folder, not a regular file"):
        open_input(str(tmp_path), "trace")
    with pytest.raises(InputFileError, match="no such file"):
        open_input(str(tmp_path / "missing"), "trace")
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    with pytest.raises(InputFileError, match="not UTF-8 text"):
        read_text(str(tmp_path / "bin"), "policy")
    (tmp_path / "ok").write_text("fine")
    assert read_text(str(tmp_path / "ok")) == "fine"
