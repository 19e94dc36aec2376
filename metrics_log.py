"""metrics.jsonl, a run's record of its optimizer steps: one JSON object with an integer `step` per line.

gpt-train appends to it and cuts it back when it resumes; gpt-push reads it for the model card. Both go through
`MetricsLog`, the one reader, which names the file and the line of anything else in it. A last line without its
newline that does not parse is what a run killed mid-append leaves: it is dropped, never refused.
"""

import json
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
