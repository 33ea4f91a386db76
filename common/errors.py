"""The project's errors: `UserError` for bad input, with one subclass per kind of input.

An error of this family is something the user gave or has that is wrong (a file, a folder, a
setting, a disk); `main.py` prints its one-line message without a traceback and exits with
status 2. Anything else that goes wrong is a bug, and `main.py` lets it show its traceback.
"""


class UserError(ValueError):
    """Something the user gave or has is wrong: a file, a folder, a setting, a disk.

    The message is one line that names the file, folder or setting, says what is wrong and how to
    fix it.
    """


class DataError(UserError):
    """A file or folder the run needs (images, metadata, a run folder's files) is missing or malformed."""


class ConfigError(UserError):
    """A bad configuration value; the message names the setting and what it accepts."""


class TrainingError(UserError):
    """Training went wrong in a way the settings or data can fix (the loss became NaN)."""
