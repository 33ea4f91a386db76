"""The project's exception types for bad input: the errors `main.py` reports in one line.

Anything else that goes wrong is a bug, and `main.py` lets it show its traceback.
"""


class UserError(ValueError):
    """Something the user gave or has is wrong: a file, a folder, a setting, a disk.

    The message is one line that names the file, folder or setting, says what is wrong and how to
    fix it; `main.py` prints it without a traceback and exits with status 2.
    """


class DataError(UserError):
    """Input data is missing or malformed."""
