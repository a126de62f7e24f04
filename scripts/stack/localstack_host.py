"""Runs LocalStack in host mode like `python -m localstack.runtime.main`, but
binds the gateway to the host part of GATEWAY_LISTEN.

LocalStack's default (twisted) gateway ignores the host for IPv4 addresses
("TODO: interface = host?" in localstack/runtime/server/twisted.py) and
listens on 0.0.0.0. scripts/stack.sh wants 127.0.0.1 only, so this wrapper
hands the configured host to twisted's TCP4ServerEndpoint for the gateway
ports. Nothing else changes: the same runtime and twisted server as the
localstack/localstack container (GATEWAY_SERVER=hypercorn would honour the
host too, but is a different server from the one measured and used in Docker).
"""

import runpy
import sys

from twisted.internet import endpoints as _endpoints

from localstack import config

try:
    import localstack.runtime.server.twisted as _server
except ImportError:  # layout changed: run unpatched, say so
    _server = None

_HOSTS = {hp.port: hp.host for hp in config.GATEWAY_LISTEN if not config.is_ipv6_address(hp.host)}


class _BoundEndpoints:
    """Stands in for `twisted.internet.endpoints` inside LocalStack's twisted server."""

    def __getattr__(self, name):
        return getattr(_endpoints, name)

    @staticmethod
    def TCP4ServerEndpoint(reactor, port, backlog=50, interface=""):  # noqa: N802
        return _endpoints.TCP4ServerEndpoint(reactor, port, backlog, interface or _HOSTS.get(port, ""))


if _server is not None and hasattr(_server, "endpoints"):
    _server.endpoints = _BoundEndpoints()
else:
    sys.stderr.write("localstack_host.py: could not patch the gateway bind address; it may listen on 0.0.0.0\n")

runpy.run_module("localstack.runtime.main", run_name="__main__", alter_sys=True)
