"""Every `python main.py ...` command in README.md and docs/*.md is one that main.py's parser takes.

Each command goes through `main.main` with argument parsing stopped at its end, so it meets the
parser main.py has now (the default `train` command included) and nothing is trained: a renamed or
removed flag, subcommand or `--set` key, a model that is not registered or a config file that is
not there fails here, naming the page and the command.
"""

import argparse
import dataclasses
import re
import shlex
from pathlib import Path

import pytest
from conftest import REPO_ROOT

import main
from networks import list_models
from training.config import TrainConfig

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# A model the pages name only to show how one is added (docs/models.md, "Adding a model").
EXAMPLE_MODELS = {"mynet"}
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1"}
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`]*\bpython3? main\.py\b[^`]*)`")


def shell_lines(block):
    """The block's commands: continued lines joined, a quote left open carried over to the next line."""
    pending = ""
    for line in block.splitlines():
        pending += line[:-1] + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: a `bash -c '...'` over several lines
            pending += "\n"
            continue
        yield pending
        pending = ""


def main_arguments(tokens):
    """The argument lists of every `python main.py` in a command's tokens, inside `bash -c '...'` too."""
    for index, token in enumerate(tokens):
        if token == "main.py" and index and Path(tokens[index - 1]).name in ("python", "python3"):
            arguments = []
            for argument in tokens[index + 1 :]:
                if argument in SHELL_OPERATORS:
                    break
                arguments.append(argument)
            yield arguments
        elif "main.py" in token and " " in token:
            yield from main_arguments(shlex.split(token, comments=True))


def documented_commands():
    for page in PAGES:
        text = page.read_text()
        for block in FENCE.findall(text):
            for line in shell_lines(block):
                for arguments in main_arguments(shlex.split(line, comments=True)):
                    yield pytest.param(arguments, id=f"{page.name}: {shlex.join(arguments)}")
        for span in INLINE.findall(FENCE.sub("", text)):
            for arguments in main_arguments(shlex.split(span)):
                if len(arguments) == 1 and arguments[0].isalpha():
                    continue  # prose naming a command ("`python main.py track` ends in ..."), not one to run
                yield pytest.param(arguments, id=f"{page.name}: {shlex.join(arguments)}")


COMMANDS = list(documented_commands())


class Parsed(BaseException):
    """Raised when main.py's parser has read a whole command line: what it made of it."""

    def __init__(self, namespace):
        super().__init__()
        self.namespace = namespace


@pytest.fixture
def parse_only(monkeypatch):
    """Stops `main.main` right after it parses its arguments, before any command runs."""
    original = argparse.ArgumentParser.parse_known_args
    depth = 0

    def parse_known_args(self, args=None, namespace=None):
        nonlocal depth
        depth += 1
        try:
            namespace, extras = original(self, args, namespace)
        finally:
            depth -= 1
        if depth:  # a subcommand's parser, inside the main parser's call
            return namespace, extras
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        raise Parsed(namespace)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_known_args)


def test_the_pages_have_commands():
    pages = {param.id.split(":")[0] for param in COMMANDS}
    assert {"README.md", "usage.md", "studies.md", "serving.md", "tracking-and-tuning.md"} <= pages
    assert len(COMMANDS) >= 30


@pytest.mark.parametrize("arguments", COMMANDS)
def test_documented_command_parses(arguments, parse_only, capsys):
    with pytest.raises((Parsed, SystemExit)) as outcome:
        main.main(arguments)
    if outcome.type is SystemExit:  # argparse refused the command, or printed --help
        assert outcome.value.code == 0 and "--help" in arguments, capsys.readouterr().err.strip().splitlines()[-1:]
        return
    settings = {field.name for field in dataclasses.fields(TrainConfig)}
    for flag, value in zip(arguments, arguments[1:]):
        if flag == "--set":
            assert value.partition("=")[0] in settings, f"--set {value}: no such setting in training/config.py"
        elif flag == "--model" and value != "all":
            assert value in {*list_models(), *EXAMPLE_MODELS}, f"--model {value}: not a registered model"
        elif flag == "--config" and value.startswith("configs/"):
            assert (REPO_ROOT / value).is_file(), f"--config {value}: no such preset"


def test_every_script_the_pages_run_exists():
    missing = []
    for page in PAGES:
        for script in re.findall(
            r"\b(?:python3?|bash) ((?:benchmarks|networks|evaluation|training)/[\w/]+\.(?:py|sh))\b", page.read_text()
        ):
            if not (REPO_ROOT / script).is_file():
                missing.append(f"{page.name}: {script}")
    assert missing == []
