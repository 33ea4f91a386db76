"""`main.py serve` in a child process, for code that talks HTTP to it (tests, the latency benchmark).

with served("results/runs/RUN") as url:
    urllib.request.urlopen(f"{url}/health")
"""

import contextlib
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def served(run_dir, *, timeout=120):
    """Starts `main.py serve RUN_DIR --port 0` on 127.0.0.1 (the system picks a free port).

    Yields:
        The server's URL, once uvicorn says it is listening; the server stops on exit.

    Raises:
        queue.Empty: the server did not start within `timeout` seconds.
    """
    process = subprocess.Popen(
        [sys.executable, "main.py", "serve", str(run_dir), "--port", "0"],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    # uvicorn announces its address on stderr; a thread drains it so that the pipe never fills.
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    try:
        url = None
        while url is None:
            match = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", lines.get(timeout=timeout))
            url = match.group(1) if match else None
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
