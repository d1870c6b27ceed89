"""The supemb web demo as one runnable file, for hosting services (a Gradio Space) and checkouts.

    python demo/app.py          # what a Space runs (set app_file: demo/app.py)
    gradio demo/app.py          # the same, reloading on edits

The app itself is `supemb.demo.app` (inside the package; `supemb demo` serves
the same app): this file only launches it on the default bundles. A host says
where to listen through gradio's own variables, GRADIO_SERVER_NAME and
GRADIO_SERVER_PORT (a Space sets 0.0.0.0 and 7860); without them it is
127.0.0.1:7860, this machine only.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

if importlib.util.find_spec("supemb") is None:  # a checkout without `pip install .`: use its own package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# checked before gradio is imported: gradio itself reads the variable at import, and a bad one is a traceback there
os.environ.setdefault("MNE_LOGGING_LEVEL", "ERROR")  # as `supemb demo` (supemb.cli.main) sets it
_port = os.environ.get("GRADIO_SERVER_PORT", "7860")
if not _port.isdigit() or int(_port) > 65535:
    sys.exit(f"demo/app.py: GRADIO_SERVER_PORT must be a port number 0-65535, got {_port!r}")

from supemb.demo.app import HOST, PORT, launch  # noqa: E402 - after the path is known

if __name__ == "__main__":
    host = os.environ.get("GRADIO_SERVER_NAME", HOST)
    port = int(os.environ.get("GRADIO_SERVER_PORT", PORT))
    demo = launch(host=host, port=port, prevent_thread_lock=True)  # `gradio demo/app.py` reloads `demo`
    demo.block_thread()  # until Ctrl-C (returns at once when gradio's reloader re-runs this file)
