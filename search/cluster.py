"""Joining a Ray cluster started with ``ray start``: its address, and its token.

    --address host:port --check_reachable--> something listens --authenticate--> the head's GCS
      answers without a token (authentication off) | with the token Ray finds here (then this
      process sends it: RAY_AUTH_MODE=token) | refuses it: ClusterError naming what to set

Ray 2.60's ``ray start --head`` turns token authentication on where a token exists (``~/.ray/auth_token``,
which ``ray get-auth-token --generate`` and every local ``ray.init()`` write), and a driver joining
by address sends it only with ``RAY_AUTH_MODE=token``; otherwise ``ray.init`` retries for ~20 s, a
log line to stderr each time, then fails with "Failed to connect". So the driver asks the head
first, with one plain gRPC call, and sends the token Ray would read (``RAY_AUTH_TOKEN``, else the
file at ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``) only to a head that asks for one. An
explicit ``RAY_AUTH_MODE`` is kept as it is.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

AUTH_MODE = "RAY_AUTH_MODE"
TOKEN_HELP = ("set RAY_AUTH_TOKEN to the head's token (`ray get-auth-token` prints it there), or copy the head's "
              "~/.ray/auth_token to this machine's ~/.ray/auth_token (or to a file named by RAY_AUTH_TOKEN_PATH)")


class ClusterError(RuntimeError):
    """No Ray cluster answers at the given address, or it refuses this driver."""


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fails in seconds, not minutes, when nothing listens at ``host:port``."""
    if address == "auto":
        return
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise ClusterError(f"no Ray cluster answers at {address} ({err}); start one with "
                           f"`ray start --head --port={port}` or leave out --address to run locally") from None


def _host_port(address: str) -> tuple[str, int]:
    match = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", address)
    if match is None:
        raise ClusterError(f"--address {address!r}: expected host:port (or ray://host:port, or auto)")
    return match.group(1), int(match.group(2))


def authenticate(address: str, timeout: float = 10.0) -> None:
    """Makes this process send the cluster's token where the head at ``address`` asks for one.

    ``auto``, Ray Client addresses (``ray://``) and clusters on TLS (``RAY_USE_TLS``) are left to
    Ray: ``auto`` finds a cluster of this machine, whose token Ray sends by itself, and the others
    do not speak the plain gRPC of this check.
    """
    tls = os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")
    if address == "auto" or address.startswith("ray://") or tls or _head_answers(address, (), timeout):
        return
    if not _head_answers(address, _token_metadata(address), timeout):
        raise ClusterError(f"the Ray cluster at {address} refused the token from {_token_source()}: it is not "
                           f"this cluster's; {TOKEN_HELP}")
    if os.environ.get(AUTH_MODE, "").lower() != "token":
        from ray._raylet import Config

        os.environ[AUTH_MODE] = "token"   # read by Ray's config, here and in the processes this one starts
        Config.initialize("")


def _token_metadata(address: str) -> tuple:
    """The gRPC metadata carrying the token Ray finds here, for the head at ``address`` that asks for one."""
    wants = f"the Ray cluster at {address} has token authentication on"
    mode = os.environ.get(AUTH_MODE, "")
    if mode and mode.lower() != "token":
        raise ClusterError(f"{wants}, and {AUTH_MODE}={mode} keeps this driver from sending a token: "
                           f"set {AUTH_MODE}=token")
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not os.environ.get("RAY_AUTH_TOKEN") and path and not _readable_token(path):
        # Ray aborts the whole process on an unreadable or empty RAY_AUTH_TOKEN_PATH
        raise ClusterError(f"{wants}, and RAY_AUTH_TOKEN_PATH={path} holds no token (missing, unreadable or "
                           f"empty): {TOKEN_HELP}")
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        raise ClusterError(f"{wants} and no token was found here: {TOKEN_HELP}")
    return tuple(loader.get_token_for_http_header(ignore_auth_mode=True).items())


def _head_answers(address: str, metadata: tuple, timeout: float) -> bool:
    """True if the GCS at ``address`` answers a request carrying ``metadata``, False if it asks
    for a (valid) token; ClusterError if what listens there is not a Ray head."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    host, port = _host_port(address)
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=timeout, metadata=metadata)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                return False
            raise ClusterError(f"what listens at {address} does not answer as a Ray head ({err.code().name}); "
                               "give the address `ray start --head` printed (host:port of its GCS, port 6379 "
                               "by default)") from None
    return True


def _readable_token(path: str) -> bool:
    try:
        return bool(Path(path).expanduser().read_text().strip())
    except OSError:
        return False


def _token_source() -> str:
    """Where Ray took the token from, in Ray's order."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return os.environ["RAY_AUTH_TOKEN_PATH"]
    return "~/.ray/auth_token"
