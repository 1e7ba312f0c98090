"""`llava.errors`: the one error policy (statuses, one line, --debug / LLAVA_DEBUG) and the readers
that turn "this file is damaged" into an error naming the file."""

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from llava.errors import (
    DEBUG_ENV,
    DamagedInputError,
    UsageError,
    UserError,
    debug_requested,
    one_line,
    read_json_file,
    read_safetensors_header,
    require_output_folder,
    require_path,
    run_main,
    torch_load_file,
)


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)


def raising(error):
    def main(argv):
        raise error
    return main


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ----------------------------------------------------------------------------- run_main


def test_statuses_of_a_normal_run():
    assert run_main(lambda argv: None, []) == 0
    assert run_main(lambda argv: 0, []) == 0
    assert run_main(lambda argv: 3, []) == 3
    seen = []
    run_main(seen.append, ["--x", "1"])
    assert seen == [["--x", "1"]]


@pytest.mark.parametrize(("error", "status"), [
    (UsageError("--flag 7 is bad;\n  use 3."), 2),
    (DamagedInputError("file x.json is damaged\n(line 2)"), 1),
    (UserError("a user error"), 1),
    (PermissionError(13, "Permission denied", "/root/x"), 1),
])
def test_a_user_error_is_one_line_and_its_status(error, status, capsys):
    assert run_main(raising(error), []) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert err.strip() == f"error: {one_line(error)}"
    assert "\n" not in one_line(error) and "  " not in one_line(error)


def test_ctrl_c_is_status_130(capsys):
    assert run_main(raising(KeyboardInterrupt()), []) == 130
    assert capsys.readouterr().err == "error: interrupted\n"


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        run_main(raising(ZeroDivisionError("division by zero")), [])
    with pytest.raises(TypeError):
        run_main(raising(TypeError("x")), [])


def test_debug_flag_reraises(capsys):
    with pytest.raises(UsageError, match="bad"):
        run_main(raising(UsageError("bad")), ["--debug"])
    with pytest.raises(DamagedInputError):
        run_main(raising(DamagedInputError("bad")), ["--x", "--debug"])
    with pytest.raises(KeyboardInterrupt):
        run_main(raising(KeyboardInterrupt()), ["--debug"])
    assert capsys.readouterr().err == ""


def test_train_style_entry_points_ignore_debug_but_honour_the_environment(monkeypatch, capsys):
    """train.py's --debug is transformers'; there LLAVA_DEBUG=1 asks for the traceback."""
    assert run_main(raising(UsageError("bad")), ["--debug", "underflow_overflow"], debug_option=None) == 2
    assert error_lines(capsys.readouterr().err) == ["error: bad"]
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(UsageError):
        run_main(raising(UsageError("bad")), [], debug_option=None)
    with pytest.raises(UsageError):
        run_main(raising(UsageError("bad")), [])
    monkeypatch.setenv(DEBUG_ENV, "0")
    assert run_main(raising(UsageError("bad")), []) == 2


def test_debug_requested_reads_sys_argv_when_argv_is_none(monkeypatch):
    monkeypatch.setattr("sys.argv", ["tool", "--debug"])
    assert debug_requested(None)
    assert not debug_requested(None, option=None)
    assert not debug_requested([])


def test_user_errors_are_value_errors():
    """API callers that catch ValueError keep working."""
    assert issubclass(UsageError, ValueError) and issubclass(DamagedInputError, ValueError)
    assert UsageError.exit_status == 2 and DamagedInputError.exit_status == 1
    assert one_line(ValueError()) == "ValueError"


# ----------------------------------------------------------------------------- require_path


def test_require_path_kinds(tmp_path):
    file, folder = tmp_path / "a.json", tmp_path / "dir"
    file.write_text("{}")
    folder.mkdir()
    assert require_path(file, "--x", "file") == file
    assert require_path(folder, "--x", "dir") == folder
    assert require_path(file, "--x") == file and require_path(folder, "--x", "any") == folder
    with pytest.raises(UsageError, match=r"^--data_path .*nowhere.json does not exist\.$"):
        require_path(tmp_path / "nowhere.json", "--data_path", "file")
    with pytest.raises(UsageError, match=r"^--data_path .*dir is a folder; give a file\.$"):
        require_path(folder, "--data_path", "file")
    with pytest.raises(UsageError, match=r"^--image_folder .*a.json is a file; give a folder\.$"):
        require_path(file, "--image_folder", "dir")
    with pytest.raises(UsageError, match="not a regular file"):
        require_path("/dev/null", "--x", "file")


def test_require_path_expands_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "f").write_text("")
    assert require_path("~/f", "--x", "file") == tmp_path / "f"


def test_require_output_folder(tmp_path):
    file = tmp_path / "a.txt"
    file.write_text("")
    new = tmp_path / "runs" / "first"
    assert require_output_folder(new, "--out") == new and not new.exists()  # checked, not made
    assert require_output_folder(tmp_path, "--out") == tmp_path
    with pytest.raises(UsageError, match=r"^--out .*a.txt is a file; give a folder for the assets\.$"):
        require_output_folder(file, "--out", "a folder for the assets")
    with pytest.raises(UsageError, match=r"^--dst .*a.txt/x/y: .*a.txt is a file, so the folder cannot be created"):
        require_output_folder(file / "x" / "y", "--dst")


# ----------------------------------------------------------------------------- readers


def test_read_json_file_names_the_file_and_line(tmp_path):
    good, bad, binary = tmp_path / "good.json", tmp_path / "config.json", tmp_path / "bin.json"
    good.write_text('{"a": [1, 2]}')
    assert read_json_file(good) == {"a": [1, 2]}
    bad.write_text('{\n  "a": 1,\n  "b": \n}\n')
    with pytest.raises(DamagedInputError, match=rf"^model config {bad} is not valid JSON \(line 4, column 1: "):
        read_json_file(bad, "model config")
    binary.write_bytes(b'{"a": "\xff\xfe"}')
    with pytest.raises(DamagedInputError, match=rf"JSON file {binary} is not UTF-8 text"):
        read_json_file(binary)


@pytest.fixture
def weights_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(64), "b": torch.ones(8, 8)}, str(path))
    return path


def test_read_safetensors_header_of_a_whole_file(weights_file):
    header = read_safetensors_header(weights_file)
    assert set(header) - {"__metadata__"} == {"a", "b"}


def test_read_safetensors_header_of_a_truncated_file(weights_file):
    data = weights_file.read_bytes()
    weights_file.write_bytes(data[:-40])
    with pytest.raises(DamagedInputError, match=rf"weights file {weights_file} is cut short \({len(data) - 40} bytes"):
        read_safetensors_header(weights_file)
    weights_file.write_bytes(data[:20])  # cut inside the header
    with pytest.raises(DamagedInputError, match=rf"weights file {weights_file} is damaged \(its header claims"):
        read_safetensors_header(weights_file)


def test_read_safetensors_header_of_an_emptied_file(weights_file):
    weights_file.write_bytes(b"")
    with pytest.raises(DamagedInputError, match=rf"weights file {weights_file} is 0 bytes, too short"):
        read_safetensors_header(weights_file)


@pytest.mark.parametrize("content", [
    b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"\x80" * 16 + b"\x00" * 64,  # a header of bytes that are not UTF-8
    b"\x08\x00\x00\x00\x00\x00\x00\x00{{{{{{{{" + b"\x00" * 8,  # not JSON
    b"garbage!" * 4,  # a length far beyond the file
])
def test_read_safetensors_header_of_garbage(content, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(DamagedInputError, match=rf"weights file {path} "):
        read_safetensors_header(path)


@pytest.mark.parametrize("header", [[1, 2], {"a": {"dtype": "F32"}}, {"a": "x"}, 5])
def test_read_safetensors_header_that_is_json_but_no_tensor_table(header, tmp_path):
    path = tmp_path / "model.safetensors"
    data = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(data)) + data)
    with pytest.raises(DamagedInputError, match="not a safetensors tensor table"):
        read_safetensors_header(path)


def test_torch_load_file(tmp_path):
    good = tmp_path / "mm_projector.bin"
    torch.save({"w": torch.ones(2)}, good)
    assert torch.equal(torch_load_file(good)["w"], torch.ones(2))
    text = tmp_path / "notes.bin"
    text.write_text("these are notes, not weights\n")
    with pytest.raises(DamagedInputError, match=rf"^adapter {text} is not a readable torch checkpoint \(\w+"):
        torch_load_file(text, "adapter")
    for name, content in (("empty.bin", b""), ("zip.bin", b"PK\x03\x04" + b"\x00" * 60), ("noise.bin", bytes(range(256)))):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(DamagedInputError, match=rf"checkpoint file {path} is not a readable torch checkpoint"):
            torch_load_file(path)
    error = pytest.raises(DamagedInputError, torch_load_file, text).value
    assert len(str(error)) < 300 and "\n" not in str(error)


def test_torch_load_file_leaves_os_errors_to_the_os(tmp_path):
    with pytest.raises(IsADirectoryError):
        torch_load_file(tmp_path)
