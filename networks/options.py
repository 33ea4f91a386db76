"""Checks that the options dataclasses (a model's architecture, the head, the augmentation) share.

Their values come from YAML (a config file, `--set`): a value of the wrong type or range is a
ValueError naming the option, which the config reports in one line, not a failure inside Keras.
"""

import dataclasses

# What each annotated type takes, in a reader's words; the tuples hold widths and counts.
KINDS = {int: "a whole number", float: "a number", str: "a string", tuple: "a list of whole numbers"}


def check_types(options, what):
    """Raises ValueError naming the first field whose value is not of its annotated type.

    Args:
        options: a dataclass instance whose fields are annotated int, float, str or tuple.
        what: the options' name in the message ("CNN", "head", "augmentation").
    """
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if field.type in KINDS and not _is_a(value, field.type):
            raise ValueError(f"{what} {field.name} must be {KINDS[field.type]}; got {_shown(value)}")


def check_positive(options, what, *names):
    """Raises ValueError unless each named field, a whole number or a tuple of them, is at least 1."""
    for name in names:
        value = getattr(options, name)
        if any(item < 1 for item in (value if isinstance(value, tuple) else (value,))):
            raise ValueError(
                f"{what} {name} must be {'whole numbers' if isinstance(value, tuple) else 'a whole number'} of at least 1; got {_shown(value)}"
            )


def _is_a(value, kind):
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    if kind is tuple:
        return isinstance(value, tuple) and all(isinstance(item, int) and not isinstance(item, bool) for item in value)
    return isinstance(value, kind)


def _shown(value):
    """The value as the YAML that set it reads: a list, not a tuple."""
    return repr(list(value) if isinstance(value, tuple) else value)
