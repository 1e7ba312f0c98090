"""Data pre-flight: `python -m llava.train.check_data --data_path a.json,b.jsonl --image_folder DIR`.

Reads every record and fully decodes every image once, and reports per problem kind how many
records are affected and which ids (JSON syntax errors by file and line). With
`--model_name_or_path` (for its tokenizer) it also finds records whose supervised part would be
truncated away at `--model_max_length`. The checks are `llava.train.record_checks`, the same the
training dataset applies. Exit status: 0 when the share of unusable records is at most
`--max_bad_sample_fraction` (the data is usable); 1 when it is higher, or when the files hold no
record at all (nothing to train on), or a file cannot be used; 2 when an option is wrong (a path that
is not there, an unknown `--version`, malformed `--image_grid_pinpoints`), found before any record is
read. Errors are one `error: ...` line on stderr (`llava.errors.run_main`; `--debug` for the traceback).
`check_training_paths`, `check_template` and `parse_grid_pinpoints_option` are the same early checks
for `train.py`'s flags.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field

from llava.conversation import conv_templates
from llava.errors import (
    DamagedInputError,
    UsageError,
    require_output_file,
    require_path,
    run_main,
    short_reason,
)
from llava.mm_utils import get_anyres_image_grid_shape, parse_grid_pinpoints
from llava.model.language_model.llava_decoder import DEFAULT_GRID_PINPOINTS
from llava.train.data import data_files, read_records, tokens_kept
from llava.train.record_checks import (
    NOTICE_KINDS,
    PROBLEM_KINDS,
    BadRecord,
    check_image_file,
    check_record,
    record_id,
    record_image_paths,
    tokenize_record,
)

MAX_IDS_SHOWN = 10


@dataclass
class TokenBudget:
    """What the truncation check needs: the tokenizer, template and expanded length of an image.

    `image_tokens` is one crop's expansion (tokens per crop + its newline). With `grid_pinpoints`
    (AnyRes) an image of size (w, h) expands to (1 base + the tiles AnyRes cuts it into) crops, as in
    training; without, to one crop (`--image_aspect_ratio pad`).
    """

    tokenizer: object
    template: str
    model_max_length: int
    image_tokens: int
    grid_pinpoints: str | list | None = None
    crop_size: int = 336

    def image_token_count(self, width: int, height: int) -> int:
        if self.grid_pinpoints is None:
            return self.image_tokens
        columns, rows = get_anyres_image_grid_shape((width, height), self.grid_pinpoints, self.crop_size)
        return (1 + columns * rows) * self.image_tokens


@dataclass
class DataReport:
    records: int = 0
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # kind -> ids / places
    notices: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def bad(self) -> int:
        return sum(len(ids) for ids in self.problems.values())

    def usable(self, max_bad_fraction: float) -> bool:
        return self.bad <= max_bad_fraction * max(self.records, 1)

    def lines(self) -> list[str]:
        out = [f"{self.records} records read, {self.bad} unusable."]
        for title, table, kinds in (("PROBLEM", self.problems, PROBLEM_KINDS), ("notice", self.notices, NOTICE_KINDS)):
            for kind, ids in sorted(table.items()):
                shown = ", ".join(ids[:MAX_IDS_SHOWN]) + (" ..." if len(ids) > MAX_IDS_SHOWN else "")
                out.append(f"{title} {kind} ({kinds[kind]}): {len(ids)} -> {shown}")
        return out


def _check_images(record: dict, image_folder: str, cache: dict) -> list[tuple[str, str]]:
    """Notices (kind, text) about the record's images; raises BadRecord for the first unusable one."""
    notices = []
    for path in record_image_paths(record):
        full_path = os.path.join(image_folder, path)
        if full_path not in cache:
            try:
                cache[full_path] = check_image_file(full_path)
            except BadRecord as error:
                cache[full_path] = error
        outcome = cache[full_path]
        if isinstance(outcome, BadRecord):
            raise outcome
        if outcome.unusual_mode:
            notices.append(("unusual_mode", f"{path}: {outcome.mode}"))
        if outcome.huge:
            notices.append(("huge_image", f"{path}: {outcome.width}x{outcome.height}"))
    return notices


def _check_budget(record: dict, budget: TokenBudget, image_folder: str, cache: dict) -> None:
    """Raise BadRecord when training's truncation would leave nothing supervised (images already checked)."""
    input_ids, labels = tokenize_record(record, budget.tokenizer, budget.template)
    paths = record_image_paths(record)
    sizes = [cache[os.path.join(image_folder, path)] for path in paths]  # ImageReports from _check_images
    counts = [budget.image_token_count(size.width, size.height) for size in sizes]
    tokens_kept(input_ids, labels, counts, budget.model_max_length)


def check_data(data_path: str, image_folder: str | None, budget: TokenBudget | None = None) -> DataReport:
    """Every record of the comma-separated files, checked; a record counts once, under its first problem.
    A path that is not a file and an unknown template are UsageErrors, found before any record is read."""
    report, cache = DataReport(), {}
    paths = data_files(data_path)
    for path in paths:
        require_path(path, "--data_path", "file")
    if budget is not None:
        check_template(budget.template)
    for path in paths:
        records, file_problems = read_records(path)
        for problem in file_problems:
            report.records += 1
            report.problems[problem.kind].append(problem.where)
        for index, record in enumerate(records):
            report.records += 1
            name = record_id(record, index)
            name = f"{path}{name}" if name.startswith("#") else name  # an id-less record: file and position
            try:
                check_record(record)
                for kind, text in _check_images(record, image_folder or "", cache):
                    report.notices[kind].append(f"{name} ({text})")
                if budget is not None:
                    _check_budget(record, budget, image_folder or "", cache)
            except BadRecord as error:
                report.problems[error.kind].append(name)
                logging.getLogger(__name__).debug("%s: %s", name, error)
    return report


class TrainingSetupError(UsageError):
    """A training flag that points nowhere usable (exit status 2); printed as one line."""


def _local_or_hub(path: str, flag: str) -> None:
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise TrainingSetupError(f"{flag} {path} is a file; point it at a saved model folder (with config.json).")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise TrainingSetupError(f"{flag} {path} has no config.json; point it at a saved model folder.")
    elif path.startswith(("/", ".", "~")) or path.count("/") != 1:
        raise TrainingSetupError(f"{flag} {path} does not exist (and is not a hub name like 'org/name'); fix the path.")


def check_training_paths(model_name_or_path: str, vision_tower: str | None, data_path: str,
                         image_folder: str | None) -> None:
    """Fail before anything loads when a path flag of `train.py` points nowhere; raises TrainingSetupError."""
    _local_or_hub(model_name_or_path, "--model_name_or_path")
    if vision_tower:
        _local_or_hub(vision_tower, "--vision_tower")
    for path in data_files(data_path):
        if not os.path.exists(path):
            raise TrainingSetupError(f"--data_path {path} does not exist; give LLaVA .json / .jsonl files, "
                                     "comma-separated.")
        if not os.path.isfile(path):
            raise TrainingSetupError(f"--data_path {path} is not a file; give LLaVA .json / .jsonl files, "
                                     "comma-separated.")
    if image_folder:
        check_image_folder(image_folder)


def check_image_folder(image_folder: str) -> None:
    if not os.path.exists(image_folder):
        raise TrainingSetupError(f"--image_folder {image_folder} does not exist; give the folder the image paths "
                                 "in the data are relative to.")
    if not os.path.isdir(image_folder):
        raise TrainingSetupError(f"--image_folder {image_folder} is not a folder; give the folder the image paths "
                                 "in the data are relative to.")


def check_template(version: str, option: str = "--version") -> None:
    """An unknown conversation template is one bad option (UsageError), not a tokenization problem of
    every record."""
    if version not in conv_templates:
        raise UsageError(f"{option} {version!r} is not a conversation template. Known: "
                         f"{', '.join(sorted(conv_templates))} (python -m llava.conversation --model LLM prints "
                         "the one for a model).")


RANGE_FORM = re.compile(r"\s*\(\d+x\d+\)\s*,\s*\.\.\.\s*,\s*\(\d+x\d+\)\s*")
PINPOINTS_FORMS = "a list of (width, height) pairs such as [[336,672],[672,336],[672,672]], or a grid range such as (1x1),...,(3x3)"


def parse_grid_pinpoints_option(value: str | list | None, option: str = "--image_grid_pinpoints",
                                patch_size: int = 336) -> str | list | None:
    """`value` as the model config takes it: the list form parsed into lists, the range form kept as
    text (the config expands it per tower). Malformed or empty: a UsageError naming `option` and the forms."""
    if value in (None, ""):
        return None
    if isinstance(value, str) and "x" in value and not RANGE_FORM.fullmatch(value):
        raise UsageError(f"{option} {value!r} cannot be parsed; give {PINPOINTS_FORMS}.")
    try:
        resolutions = parse_grid_pinpoints(value, patch_size)
    except ValueError as error:
        raise UsageError(f"{option} {value!r} cannot be parsed; give {PINPOINTS_FORMS}.") from error
    if not resolutions:
        raise UsageError(f"{option} {value!r} names no grid (a range must go from the smaller grid to the larger); "
                         f"give {PINPOINTS_FORMS}.")
    if isinstance(value, str) and "x" in value:
        return value
    return [list(pair) for pair in resolutions]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--data_path", required=True, help="comma-separated LLaVA .json / .jsonl files")
    parser.add_argument("--image_folder", default=None, help="folder the records' image paths are relative to")
    parser.add_argument("--model_name_or_path", default=None, help="model whose tokenizer checks truncation")
    parser.add_argument("--version", default="v1", help="conversation template, as in training")
    parser.add_argument("--model_max_length", type=int, default=2048)
    parser.add_argument("--image_tokens", type=int, default=577,
                        help="tokens one crop expands to (tokens per crop + its newline); 577 for CLIP-L/336")
    parser.add_argument("--image_aspect_ratio", choices=("pad", "anyres"), default="pad",
                        help="as in training: pad = one crop per image (stage 1); anyres = base crop + tiles (stage 2)")
    parser.add_argument("--image_grid_pinpoints", default=None,
                        help="AnyRes grids as in training (default: LLaVA-1.6's, up to 5 crops)")
    parser.add_argument("--crop_size", type=int, default=336, help="the vision tower's input side")
    parser.add_argument("--max_bad_sample_fraction", type=float, default=0.01)
    parser.add_argument("--report_json", default=None, help="also write the report here as JSON")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def check_options(args: argparse.Namespace) -> None:
    """Every option checked before any record is read; UsageError naming the option."""
    for option, value in (("--model_max_length", args.model_max_length), ("--image_tokens", args.image_tokens),
                          ("--crop_size", args.crop_size)):
        if value < 1:
            raise UsageError(f"{option} must be at least 1, got {value}.")
    if not 0 <= args.max_bad_sample_fraction <= 1:
        raise UsageError(f"--max_bad_sample_fraction must be in [0, 1], got {args.max_bad_sample_fraction}.")
    check_template(args.version)
    args.image_grid_pinpoints = parse_grid_pinpoints_option(args.image_grid_pinpoints, patch_size=args.crop_size)
    for path in data_files(args.data_path):
        require_path(path, "--data_path", "file")
    if args.image_folder:
        check_image_folder(args.image_folder)
    if args.report_json:
        require_output_file(args.report_json, "--report_json")


def load_tokenizer(model_name_or_path: str, option: str = "--model_name_or_path", **kwargs):
    """The model's tokenizer (`AutoTokenizer.from_pretrained(model_name_or_path, **kwargs)`); a path
    that is not a model (UsageError), or a model folder without a usable tokenizer (DamagedInputError),
    is one error naming `option`."""
    from transformers import AutoTokenizer

    _local_or_hub(model_name_or_path, option)
    try:
        return AutoTokenizer.from_pretrained(model_name_or_path, **kwargs)
    except (OSError, ValueError, TypeError) as error:
        if os.path.isdir(model_name_or_path):
            raise DamagedInputError(f"{option} {model_name_or_path}: its tokenizer cannot be loaded "
                                    f"({short_reason(error, 160)}); restore the tokenizer files.") from error
        raise UsageError(f"{option} {model_name_or_path} is not a local folder and its tokenizer cannot be fetched "
                         f"({short_reason(error, 160)}); give a model folder.") from error


def main(argv=None) -> int:
    """The pre-flight; problems the user can fix raise `llava.errors.UserError` (see `run_main`)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    check_options(args)
    budget = None
    if args.model_name_or_path:
        tokenizer = load_tokenizer(args.model_name_or_path)
        pinpoints = None
        if args.image_aspect_ratio == "anyres":
            pinpoints = args.image_grid_pinpoints or [list(pair) for pair in DEFAULT_GRID_PINPOINTS]
        budget = TokenBudget(tokenizer, args.version, args.model_max_length, args.image_tokens, pinpoints,
                             args.crop_size)
    report = check_data(args.data_path, args.image_folder, budget)
    print("\n".join(report.lines()))
    if args.report_json:
        with open(args.report_json, "w", encoding="utf-8") as handle:
            json.dump({"records": report.records, "problems": report.problems, "notices": report.notices}, handle,
                      indent=1)
    if report.records == 0:
        raise DamagedInputError(f"--data_path {args.data_path} holds no records: nothing to train on; give files "
                                "with LLaVA records (a JSON list, or one JSON object per line in .jsonl).")
    usable = report.usable(args.max_bad_sample_fraction)
    print("The data is usable." if usable else
          f"The data is NOT usable: more than {args.max_bad_sample_fraction:g} of the records are bad; fix or drop them.")
    return 0 if usable else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
