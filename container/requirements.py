"""The container image's Python requirements, read from pyproject.toml, printed one a line for pip.

    python3 container/requirements.py serve --tensorflow tensorflow-cpu > requirements.txt

The base dependencies and those of the extras named (comma-separated), with `tensorflow` replaced by
the distribution given: `tensorflow-cpu` (the same TensorFlow without its CUDA kernels), or nothing
(`--tensorflow ''`) for an image that runs JAX only. pyproject.toml stays the one list of dependencies.
"""

import argparse
import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10, which the project supports: pip carries the same parser
    from pip._vendor import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def requirements(extras, tensorflow):
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    optional = project["optional-dependencies"]
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        sys.exit(f"error: no extra {', '.join(unknown)} in pyproject.toml; the extras are {', '.join(optional)}")
    lines = []
    for requirement in [*project["dependencies"], *(line for extra in extras for line in optional[extra])]:
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group()
        if name.lower() == "tensorflow":
            if not tensorflow:
                continue
            requirement = tensorflow + requirement[len(name) :]
        lines.append(requirement)
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="?", default="", help="comma-separated extras of pyproject.toml (serve,track)")
    parser.add_argument(
        "--tensorflow", default="tensorflow", help="the distribution that provides TensorFlow ('' for none)"
    )
    arguments = parser.parse_args()
    extras = [extra.strip() for extra in arguments.extras.split(",") if extra.strip()]
    print("\n".join(requirements(extras, arguments.tensorflow)))


if __name__ == "__main__":
    main()
