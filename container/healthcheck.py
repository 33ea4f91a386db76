"""The image's HEALTHCHECK. A container running `main.py serve` is healthy while its GET /health
answers {"status": "ok"}; one that trains, evaluates or predicts has no endpoint to ask and counts as
healthy while it runs, so that no orchestrator restarts a training run for being "unhealthy".

Standard library only: it runs every 30 s and must not pay for importing Keras.
"""

import json
import sys
import urllib.request
from pathlib import Path

DEFAULT_PORT = 8000  # main.py serve's default
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


def serve_arguments():
    """The arguments after `serve` of the container's `main.py serve` process, or None if none serves."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            arguments = [part.decode() for part in cmdline.read_bytes().split(b"\0")]
        except OSError:  # the process ended while we looked
            continue
        if any(part.endswith("main.py") for part in arguments) and "serve" in arguments:
            return arguments[arguments.index("serve") + 1 :]
    return None


def option(arguments, name, default):
    for index, argument in enumerate(arguments):
        if argument == name and index + 1 < len(arguments):
            return arguments[index + 1]
        if argument.startswith(name + "="):
            return argument.split("=", 1)[1]
    return default


def main():
    arguments = serve_arguments()
    if arguments is None:
        return 0
    host = option(arguments, "--host", "127.0.0.1")
    host = "127.0.0.1" if host in WILDCARD_HOSTS else host
    host = f"[{host}]" if ":" in host else host  # an IPv6 address
    port = option(arguments, "--port", DEFAULT_PORT)
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=5) as response:
            healthy = json.loads(response.read()) == {"status": "ok"}
    except (OSError, ValueError) as error:
        print(f"unhealthy: GET http://{host}:{port}/health: {error}")
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
