"""The records gpt-train writes of a run and gpt-push reads back, each through one validated reader here.

- metrics.jsonl (`MetricsLog`): one JSON object with an integer `step` per line; gpt-train appends to it and cuts it
  back when it resumes, gpt-push reads it for the model card. Anything else in it is refused naming the file and
  the line, except a last line without its newline that does not parse: what a run killed mid-append leaves, dropped.
- a checkpoint's trainer_state.json and final/'s training_record.json (`read_run_record`): a JSON object whose
  fields, where present, have the types the trainer writes; another value is refused naming the file, the field,
  the value and what is expected.
"""

import json
import math
import os
from pathlib import Path
from typing import Union

import atomic_io
from cli_guard import UserError

FIX = "each line must be a JSON object with an integer step, as gpt-train writes them; repair or remove that line"


class MetricsLog:
    """metrics.jsonl: one JSON object per optimizer step, appended as the run goes."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)

    def read(self) -> list[dict]:
        """Every record, in order (none for a missing file); a line that is not a JSON object with an integer step is
        a UserError naming the file and the line, except a torn last line (no newline, not JSON), which is dropped."""
        if not self.path.exists():
            return []
        lines = self.path.read_bytes().split(b"\n")  # the last item is b"" when the file ends in a newline
        records = []
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            torn = number == len(lines)  # no newline after it
            where = f"{self.path} line {number}"
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                if torn:
                    break
                raise UserError(f"{where} is not UTF-8 text (byte {err.start + 1}): {FIX}") from None
            except json.JSONDecodeError as err:
                if torn:
                    break
                raise UserError(f"{where} is not valid JSON ({err.msg}): {FIX}") from None
            if not isinstance(record, dict):
                raise UserError(f"{where} is not a JSON object ({raw.decode()[:40]}): {FIX}")
            step = record.get("step")
            if not isinstance(step, int) or isinstance(step, bool):
                raise UserError(f"{where} has step={step!r}, not an integer: {FIX}")
            records.append(record)
        return records

    def truncate(self, last_step: int):
        """Keep the steps <= last_step (what a resumed run has not redone); drop a torn last line."""
        if not self.path.exists():
            return
        kept = [record for record in self.read() if record["step"] <= last_step]
        atomic_io.write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def append(self, records: list[dict]):
        with self.path.open("a") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")


# what the trainer writes into trainer_state.json (run_facts plus the loader's state) and training_record.json:
# field -> (type, minimum). A reader needs only some of them; a record from an older trainer may lack any.
RUN_RECORD_FIELDS = {
    "step": (int, 0), "tokens": (int, 0), "world_size": (int, 1), "total_batch_tokens": (int, 1), "seq_len": (int, 1),
    "elapsed_seconds": (float, 0), "hardware": (dict, None), "tokenizer_hash": (str, None),
    "model_config": (dict, None), "config": (dict, None), "data": (dict, None), "train_loader": (dict, None),
    "files": (list, None),  # a checkpoint's files as saved (relative paths): one missing later is damage
}
# a checkpoint's position in the data (token_shards.ShardDataLoader.state_dict) and the data set it was read from
NESTED_FIELDS = {
    "train_loader": {"position": (int, 0), "split": (str, None), "batch_size": (int, 1), "seq_len": (int, 1),
                     "seed": (int, None), "shuffle": (bool, None), "tokens_per_epoch": (int, 1)},
    "data": {"dir": (str, None), "sha256": (str, None)},
}
EXPECTED = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a JSON object",
            list: "a list of strings"}


def _fits(value, kind, minimum) -> bool:
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, kind)
    return ok and (minimum is None or value >= minimum)


def read_run_record(path: Union[str, os.PathLike], required=()) -> dict:
    """The trainer's record at path as a dict: valid JSON (UTF-8), an object, every field in `required` present,
    every field it has (and the fields of train_loader and data) of the type the trainer writes; else a UserError
    naming the file and the field, its value and what is expected."""
    path, missing = Path(path), object()
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start + 1})") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(record, dict):
        raise UserError(f"{path} is not the trainer's record (a JSON object) but a JSON {type(record).__name__}")
    checks = [(key, record.get(key, missing), *spec) for key, spec in RUN_RECORD_FIELDS.items()
              if key in record or key in required]
    for outer, fields in NESTED_FIELDS.items():
        if isinstance(record.get(outer), dict):
            checks += [(f"{outer}.{key}", record[outer].get(key, missing), *spec) for key, spec in fields.items()]
    absent = [name for name, value, *_ in checks if value is missing]
    if absent:
        raise UserError(f"{path} has no {', '.join(absent)}")
    for name, value, kind, minimum in checks:
        if not _fits(value, kind, minimum):
            expected = EXPECTED[kind] + ("" if minimum is None else f" >= {minimum}")
            raise UserError(f"{path}: {name}={json.dumps(value)} is not {expected}, as the trainer writes it")
    return record
