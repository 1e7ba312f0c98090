"""One error policy for every entry point and the Python API.

A problem the user can fix raises a `UserError` where the input is first seen (argument parsing,
path checks, config / weights loading), naming the file, record or option and the fix:
* `UsageError` (exit status 2): a bad option value, a path that does not exist or is the wrong kind;
* `DamagedInputError` (exit status 1): a file that exists but cannot be used (damaged JSON or
  weights, a checkpoint missing a file, data with too many bad records).
Both are `ValueError`s, so API callers that catch `ValueError` keep working.

Every `main()` runs through `run_main`, which prints a `UserError` as one line on stderr,
`error: <message>`, and returns its exit status; an `OSError` no check caught (a full disk, a folder
that cannot be written) is one line and status 1; Ctrl-C is status 130. `--debug` on the command line
(or `LLAVA_DEBUG=1` in the environment, for `train.py`, whose `--debug` belongs to transformers)
shows the traceback instead. Any other exception is a bug and keeps its traceback.

Library exceptions that mean "this file is damaged" are translated where they happen, by the
readers below: `read_json_file` (JSON syntax, naming file and line), `read_safetensors_header`
(a cut or corrupt safetensors file), `torch_load_file` (a file that is not a torch checkpoint).
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path

DEBUG_ENV = "LLAVA_DEBUG"


class UserError(ValueError):
    """A problem the user can fix; the message names the culprit and the fix."""

    exit_status = 1


class UsageError(UserError):
    """A bad option value or a path that does not exist / is the wrong kind."""

    exit_status = 2


class DamagedInputError(UserError):
    """A file or record that exists but cannot be used as it is."""

    exit_status = 1



class TrainingStopped(DamagedInputError):
    """A training run stopped by its guards (too many bad records in an epoch, a NaN/inf loss)."""

def debug_requested(argv: list[str] | None, option: str | None = "--debug") -> bool:
    """`option` on the command line (`argv`, else `sys.argv`), or `LLAVA_DEBUG` set to anything but 0."""
    args = sys.argv[1:] if argv is None else argv
    if option is not None and option in args:
        return True
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None,
             debug_option: str | None = "--debug") -> int:
    """Run an entry point's `main(argv)` under the error policy; returns the exit status.

    A `UserError` is one line `error: <message>` on stderr and its `exit_status`; an `OSError` that
    escaped the entry point's own checks (a disk that is full, a folder that cannot be written) is one
    line and status 1; Ctrl-C is `error: interrupted` and 130. `debug_option` on the command line
    (`train.py` passes None: its `--debug` is transformers') or `LLAVA_DEBUG=1` re-raises instead.
    Any other exception is a bug and keeps its traceback.
    """
    try:
        return main(argv) or 0
    except UserError as error:
        if debug_requested(argv, debug_option):
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        return error.exit_status
    except OSError as error:
        if debug_requested(argv, debug_option):
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug_requested(argv, debug_option):
            raise
        print("error: interrupted", file=sys.stderr)
        return 130


def require_path(path: str | os.PathLike, option: str, kind: str = "any") -> Path:
    """`path` exists and is of `kind` ("file", "dir" or "any"), else a `UsageError` naming `option`."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"{option} {path} does not exist.")
    if kind == "file" and not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file"
        raise UsageError(f"{option} {path} is {what}; give a file.")
    if kind == "dir" and not path.is_dir():
        raise UsageError(f"{option} {path} is a file; give a folder.")
    return path


def require_output_file(path: str | os.PathLike, option: str) -> None:
    """`path` can be written as a new file: not a folder, in a folder that exists (checked before
    minutes of work), else a `UsageError` naming `option`."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a file name in it.")
    if not path.absolute().parent.is_dir():
        raise UsageError(f"{option} {path}: the folder {path.absolute().parent} does not exist; create it or pick "
                         "another path.")


def require_output_folder(path: str | os.PathLike, option: str, wanted: str = "a folder") -> Path:
    """`path` is a folder or one can be made there (checked before minutes of work): not a file, not
    under a file, below a folder that can be written; else a `UsageError` naming `option`. The
    file case says "give `wanted`"."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file; give {wanted}.")
    nearest = path.absolute()
    while not nearest.exists():  # the folders from here down are made by the run
        nearest = nearest.parent
    if not nearest.is_dir():
        raise UsageError(f"{option} {path}: {nearest} is a file, so the folder cannot be created; choose another path.")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: {nearest} is not writable; choose a folder you can write to.")
    return path


def read_json_file(path: str | os.PathLike, what: str = "JSON file"):
    """Parse `path`; damaged JSON is a `DamagedInputError` naming the file and the line."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DamagedInputError(f"{what} {path} is not valid JSON (line {error.lineno}, column {error.colno}: "
                                f"{error.msg}); restore it from the original.") from error
    except UnicodeDecodeError as error:
        raise DamagedInputError(f"{what} {path} is not UTF-8 text; restore it from the original.") from error


def read_safetensors_header(path: str | os.PathLike) -> dict:
    """The JSON header of a safetensors file, checked against the file's size: a file cut short or
    overwritten is a `DamagedInputError` naming it (safetensors' own error names neither)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise DamagedInputError(f"weights file {path} is {size} bytes, too short to be safetensors; it was cut "
                                    "off or emptied: restore it (or save the model again).")
        header_len = struct.unpack("<Q", prefix)[0]
        if header_len > size - 8:
            raise DamagedInputError(f"weights file {path} is damaged (its header claims {header_len} bytes, the file "
                                    f"has {size}); restore it (or save the model again).")
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DamagedInputError(f"weights file {path} has a damaged header; restore it.") from error
    try:
        ends = [int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"]
    except (AttributeError, KeyError, TypeError, IndexError, ValueError) as error:
        raise DamagedInputError(f"weights file {path} has a damaged header (not a safetensors tensor table); "
                                "restore it (or save the model again).") from error
    if ends and 8 + header_len + max(ends) > size:
        raise DamagedInputError(f"weights file {path} is cut short ({size} bytes, its tensors need "
                                f"{8 + header_len + max(ends)}); restore it (or save the model again).")
    return header


def torch_load_file(path: str | os.PathLike, what: str = "checkpoint file"):
    """`torch.load(path, weights_only=True)`; a file that is not a torch checkpoint is a `DamagedInputError`."""
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # cannot be read at all (permissions, a folder): the OS's own message names the file
    except Exception as error:  # pickle, zip and torch raise many kinds for a file that is not a checkpoint
        raise DamagedInputError(f"{what} {path} is not a readable torch checkpoint ({short_reason(error)}); "
                                "point at the file training wrote (e.g. mm_projector.bin).") from error


def short_reason(error: BaseException, limit: int = 100) -> str:
    """`Type: first sentence` of a library error, cut to about `limit` characters, for the
    parenthesis of a message that names the file and the fix itself."""
    text = one_line(error)
    if text == type(error).__name__:
        return text
    first = text.split(". ")[0].rstrip(".")
    if len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(error).__name__}: {first}"
