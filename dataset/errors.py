"""The one exception type for bad input data."""


class DataError(ValueError):
    """Input data is missing or malformed.

    The message is one line that names the file (or folder) and says what is wrong and how to
    fix it; `main.py` prints it without a traceback.
    """
