"""Whether the model hub can be reached, asked once and quickly before a hub id is loaded.

Without a network the hub client retries each request five times with growing pauses: about
45 seconds before a hub id fails, and as long before a model already in the local hub cache
is found there. One short request tells the two cases apart at once, so a
machine without the hub loads cached hub ids straight from the cache and says plainly why
an uncached one cannot load.

Examples:
    >>> from unittest import mock
    >>> from huggingface_hub import constants
    >>> with mock.patch.object(constants, "ENDPOINT", "http://127.0.0.1:9"):
    ...     hub_unreachable()  # doctest: +ELLIPSIS
    '127.0.0.1:9 does not answer (...)'
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

__all__ = ["cached_hub_snapshot", "hub_unreachable"]

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")
# Answers that come from a proxy or gateway on the way, not from the hub: the proxy wants
# credentials, or could not reach (or wait for) the hub behind it.
NOT_THE_HUB_ANSWERING = {407, 502, 503, 504}


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the model hub cannot be reached (one request, ``timeout`` seconds a step), or
    ``None`` if it answers.

    The hub is the one the hub client uses (``HF_ENDPOINT`` when it was imported); the
    request goes through the proxy the environment names, as the hub client's would. Any
    answer of the hub counts (what it then says about a model is the hub client's to
    report); a proxy or gateway answering for it that it wants credentials (407) or cannot
    reach it (502, 503, 504) does not. A hub that takes the connection but never answers is
    unreachable too.

    Examples:
        >>> import os
        >>> from unittest import mock
        >>> import huggingface_hub  # imported outside the patch, as in a session
        >>> with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):
        ...     hub_unreachable()
        'HF_HUB_OFFLINE is set'
    """
    import httpx
    from huggingface_hub import constants

    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = urlsplit(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    proxy = next((name for name in PROXY_VARIABLES if os.environ.get(name)), None)
    through = f", through the proxy in {proxy}" if proxy else ""
    try:
        response = httpx.head(constants.ENDPOINT, timeout=timeout, follow_redirects=False)
    except httpx.TimeoutException:
        return f"{host}:{port} does not answer (no reply within {timeout:g} s{through})"
    except (httpx.HTTPError, OSError) as err:
        return f"{host}:{port} does not answer ({_reason(err)}{through})"
    if response.status_code in NOT_THE_HUB_ANSWERING:
        who = f"the proxy in {proxy}" if proxy else "a gateway in front of it"
        return (
            f"{host}:{port} does not answer ({who} answered "
            f"{response.status_code} {response.reason_phrase})"
        )
    return None


def _reason(err: BaseException) -> str:
    """The innermost cause's words (the OS's, for a refused or unresolved connection)."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def cached_hub_snapshot(repo_id: str) -> str:
    """The folder of ``repo_id``'s main revision in the local hub cache, without the network.

    Raises:
        OSError: the hub cache holds no copy of ``repo_id`` (the hub client's
            ``LocalEntryNotFoundError``).

    Examples:
        >>> cached_hub_snapshot("someone/never-downloaded")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        huggingface_hub.errors.LocalEntryNotFoundError: ...
    """
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, local_files_only=True)
