"""Ray for any embedkit job: import it (a one-line error without it), join a cluster or
start a local one, and turn a worker's error into the one line the CLI shows. Ray itself
is imported only when a job asks for it."""

from __future__ import annotations

import re
from types import ModuleType

from embedkit import errors as embedkit_errors
from embedkit.errors import EmbedkitError

__all__ = ["MISSING_RAY", "connect", "import_ray", "one_line_error"]

MISSING_RAY = "the ray engine needs Ray: pip install 'embedkit[ray]'"
_ERROR_LINE = re.compile(r"^((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|NotFound)): (.+)$")


def import_ray() -> ModuleType:
    try:
        import ray
        import ray.data  # the [data] extra
    except ImportError:
        raise EmbedkitError(MISSING_RAY) from None
    return ray


def connect(ray: ModuleType, address: str | None) -> bool:
    """Join ``address`` (or ``$RAY_ADDRESS``), else start a local Ray on this machine.

    True when this call initialized Ray: the caller then calls ``ray.shutdown()``, which
    stops a local Ray it started and only disconnects from a cluster it joined.
    """
    if ray.is_initialized():
        return False
    ray.init(
        address=address or None,
        num_cpus=None,  # a local Ray counts the cores itself (cgroup limits included)
        include_dashboard=False,
        ignore_reinit_error=True,
        log_to_driver=False,
        configure_logging=False,
    )
    return True


def one_line_error(exc: BaseException) -> EmbedkitError:
    """A worker's failure as the one-line error the CLI shows.

    Ray ships a worker's exception as text (its traceback inside a ``RayTaskError``): the
    first ``module.Name: message`` line that is not Ray's own is the original error; an
    embedkit error comes back as its own class.
    """
    texts, seen, current = [], set(), exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts.append(str(current))
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    for text in texts:
        for line in text.splitlines():
            match = _ERROR_LINE.match(line.strip())
            if match and not match.group(1).startswith("ray."):
                module, _, name = match.group(1).rpartition(".")
                ours = module == embedkit_errors.__name__
                cls = getattr(embedkit_errors, name, None) if ours else None
                if isinstance(cls, type) and issubclass(cls, EmbedkitError):
                    return cls(match.group(2))
                return EmbedkitError(f"the ray engine failed: {name}: {match.group(2)}")
    first = (str(exc).strip().splitlines() or [""])[0]
    return EmbedkitError(f"the ray engine failed: {type(exc).__name__}: {first}")
