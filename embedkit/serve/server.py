"""Running the explorer: :func:`serve` (uvicorn in the foreground until Ctrl-C) and
:func:`start_in_thread` (a server on a free port of 127.0.0.1 for tests and benchmarks).

starlette and uvicorn are imported here only when a server starts, so ``import
embedkit`` stays cheap and a missing extra is one line naming what to install.
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
import warnings
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedkit.errors import EmbedkitError, InputError

if TYPE_CHECKING:
    from embedkit.store.dataset import LatentDataset

__all__ = ["LOOPBACK", "check_extras", "serve", "start_in_thread"]

#: hosts that keep the server on this machine; anything else is an explicit opt-in
LOOPBACK = ("127.0.0.1", "localhost", "::1")
EXTRAS = {"starlette": "starlette", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}
STARTUP_TIMEOUT_S = 30.0


def check_extras() -> None:
    """Raise a one-line error naming ``pip install 'embedkit[serve]'`` when the server's
    packages are missing."""
    missing = [pip for module, pip in EXTRAS.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise EmbedkitError(
            f"embedkit serve needs {', '.join(missing)}: pip install 'embedkit[serve]'"
        )


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), or a one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto named: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto is
    # IPPROTO_TCP, and with it on, each keep-alive response waited ~40 ms for an ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _server(latents: str | Path | LatentDataset, host: str, **app_options: Any) -> Any:
    """A uvicorn server for the explorer app (Host headers checked when on the loopback)."""
    import uvicorn

    from embedkit.serve.app import create_app
    from embedkit.serve.responses import LOCAL_HOSTS

    allowed = LOCAL_HOSTS if host in LOOPBACK else None
    app = create_app(latents, allowed_hosts=allowed, **app_options)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    return uvicorn.Server(config)


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def serve(
    latents: str | Path | LatentDataset,
    host: str = "127.0.0.1",
    port: int = 8765,
    open_browser: bool = False,
) -> None:
    """Serve the explorer of ``latents`` until Ctrl-C; prints its URL.

    ``host="0.0.0.0"`` listens on every interface: anyone who can reach this machine can
    then browse the dataset's images and labels (a warning says so).

    Example:
        >>> serve("latents/", port=8765, open_browser=True)
    """
    check_extras()
    if host not in LOOPBACK:
        warnings.warn(
            f"listening on {host}: anyone who can reach this machine on port {port} can "
            "browse these latents and their images",
            stacklevel=2,
        )
    server = _server(latents, host)
    server.config.app.state.explorer.warm()  # the label table now: the first page is quick
    sock = _bind(host, port)
    url = _url(host, sock.getsockname()[1])
    print(f"embedkit explorer of {latents} at {url} (Ctrl-C stops it)", flush=True)
    if open_browser:
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def start_in_thread(
    latents: str | Path | LatentDataset, port: int = 0, **app_options: Any
) -> tuple[str, Callable[[], None]]:
    """Start the explorer on 127.0.0.1 (``port`` 0: a free port) in a daemon thread.

    Returns once it accepts connections: ``(url, stop)``; ``stop()`` shuts it down and
    waits for the thread. ``app_options`` go to :func:`create_app`.

    Example:
        >>> url, stop = start_in_thread("latents/")
        >>> httpx.get(url + "api/info").json()["rows"]
        >>> stop()
    """
    check_extras()
    server = _server(latents, "127.0.0.1", **app_options)
    sock = _bind("127.0.0.1", port)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="embedkit-serve", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise EmbedkitError("the explorer server did not start; see the log above")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=STARTUP_TIMEOUT_S)
        sock.close()

    return _url("127.0.0.1", sock.getsockname()[1]), stop
