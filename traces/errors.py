"""The one error type for bad input anywhere in the project.

It renders as `FILE:LINE: FIELD: problem` (parts that do not apply are left out), which the CLI prints
as a single line on stderr with exit code 2. `traces` is the lowest layer, so `engines` and `harness`
raise this same class.
"""
from __future__ import annotations

import difflib


class InputError(ValueError):
    def __init__(self, problem: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path + (f":{self.line}" if self.line is not None else "") + ": "
        elif self.line is not None:
            where = f"line {self.line}: "
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.problem}"

    def at(self, path: str | None = None, line: int | None = None) -> "InputError":
        """The same error, located in a file (keeps what is already known)."""
        return InputError(self.problem, path=self.path or path,
                          line=self.line if self.line is not None else line, field=self.field)


def did_you_mean(word, allowed) -> str:
    """` (did you mean X?)` for the closest allowed value, or nothing."""
    close = difflib.get_close_matches(str(word), [str(a) for a in allowed], n=1)
    return f" (did you mean {close[0]}?)" if close else ""
