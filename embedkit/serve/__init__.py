"""The browser explorer of a latent dataset (``embedkit serve``): a JSON API and a page
over one dataset. Needs the ``serve`` extra (starlette, uvicorn, python-multipart),
imported only when a server is made.

``embedkit.serve`` is both this package and the function :func:`serve` exported by
``embedkit``; whichever Python binds to the name first, calling it serves.
"""

import sys
import types
from typing import Any

from embedkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "app": ["create_app"],
        "server": ["serve", "start_in_thread"],
        "state": ["ServeState"],
    },
)


class _CallablePackage(types.ModuleType):
    """This package, callable as :func:`embedkit.serve.server.serve`."""

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        from embedkit.serve.server import serve

        return serve(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
