"""systemd's readiness protocol (``Type=notify``), with the standard library alone.

systemd gives a ``Type=notify`` service the address of a datagram socket in
``$NOTIFY_SOCKET``: a path, or ``@name`` for a Linux abstract socket. The service sends it
newline-separated ``KEY=VALUE`` assignments in one datagram (``sd_notify(3)``):

* ``READY=1`` once ``ringwal serve`` serves (the log recovered, the ring created, producers
  can attach), with ``MAINPID=`` and a ``STATUS=`` line that ``systemctl status`` shows;
* ``STOPPING=1`` once it has drained and fsynced after SIGTERM/SIGINT, just before it exits.

Nothing is sent when the variable is unset (not under systemd). A failure to send is logged
and ignored: readiness is a courtesy to the supervisor, never a reason to stop serving.
Only a foreground ``serve`` notifies; a writer that ``ringwal.open`` starts is not the
service's main process (``_launch`` removes the variable from its environment).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["ENV", "notify"]

ENV = "NOTIFY_SOCKET"

log = logging.getLogger("ringwal")


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (``KEY=VALUE`` lines) to ``$NOTIFY_SOCKET``; True when it was sent.

    ``environ`` is the seam tests use (default ``os.environ``)."""
    address = (os.environ if environ is None else environ).get(ENV, "")
    if not address:
        return False
    if address[0] == "@":
        target = "\0" + address[1:]  # abstract namespace
    elif address[0] == "/":
        target = address
    else:
        log.warning("%s=%r is neither a path nor an @abstract socket name; not notifying systemd", ENV, address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        log.warning("could not notify systemd at %s=%s: %s", ENV, address, exc)
        return False
    return True
