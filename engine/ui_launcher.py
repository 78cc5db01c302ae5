"""Start the Streamlit review app (``app/main.py``) over a project: what ``curate ui`` runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

APP_MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"


def streamlit_command(project: str | os.PathLike, port: int = 8501, host: str = "127.0.0.1") -> list[str]:
    """The ``python -m streamlit run`` command line for a project (headless, local-only by default, no telemetry)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP_MAIN),
        "--server.address", str(host),
        "--server.port", str(int(port)),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--global.developmentMode", "false",
        "--client.toolbarMode", "minimal",
        "--", "--project", str(Path(project).expanduser().resolve()),
    ]


def serve(project: str | os.PathLike, port: int = 8501, host: str = "127.0.0.1") -> int:
    """Serve the app until interrupted; the project path is passed as ``CURATE_PROJECT`` and ``--project``.

    On POSIX the current process is replaced by Streamlit (``exec``), so stopping ``curate ui`` stops the server;
    elsewhere Streamlit runs as a child process and its exit code is returned.
    """
    from curate.engine.catalog import open_project

    cat = open_project(project)  # one-line error if there is no project here
    env = {**os.environ, "CURATE_PROJECT": str(cat.root)}
    cmd = streamlit_command(cat.root, port=port, host=host)
    print(f"Curate UI for {cat.root}: http://{host}:{int(port)}", flush=True)
    if os.name == "posix":
        os.execve(sys.executable, cmd, env)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130
