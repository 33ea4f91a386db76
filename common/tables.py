"""Reading the project's CSV files, with one-line errors that name the file, the line and the column."""

from pathlib import Path

import pandas as pd

from common.errors import DataError


def read_csv(path, not_found, *, as_text=True):
    """Reads a CSV file into a DataFrame, or raises a one-line DataError naming the file.

    Args:
        path: the file.
        not_found: what to say after "<path>: " when the file does not exist, e.g.
            "metadata file not found".
        as_text: read every column as strings and keep empty cells as "", so that callers can
            validate row by row and report line numbers; False lets pandas infer the types.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {not_found}")
    options = {"dtype": str, "keep_default_na": False} if as_text else {}
    try:
        frame = pd.read_csv(path, **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise DataError(f"{path}: not a readable CSV file ({first_line})") from None
    # A first row with more fields than the header is not a parser error to pandas: it takes the
    # extra leading fields for an index (a later such row is a parser error, reported above).
    if not frame.index.equals(pd.RangeIndex(len(frame))):
        raise DataError(
            f"{path}: not a readable CSV file (line 2 has more fields than the header's {len(frame.columns)})"
        )
    return frame


def require_columns(frame, columns, source, hint=None):
    """Raises a one-line DataError naming the file if `frame` lacks any of `columns`.

    Args:
        hint: what the file should have, shown in parentheses; default "expected <columns>".
    """
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        hint = hint or f"expected {', '.join(columns)}"
        raise DataError(f"{source}: missing column {', '.join(map(repr, missing))} ({hint})")


def line_number(row):
    """The line of a CSV file that holds row `row` (0-based) as an editor shows it: the header is line 1."""
    return int(row) + 2
