"""Unit: the listen backlog hps adds to endpoint strings that do not set one."""

from __future__ import annotations

import pytest
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from hps.config import Options
from hps.service import LISTEN_BACKLOG, make_service, with_backlog
from tests.support.memory import Reactor
from tests.support.server import Tree


@pytest.mark.parametrize(("description", "expected"), [
    ("tcp:8080", "tcp:8080:backlog=4096"),
    ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1:backlog=4096"),
    ("tcp:port=8080:interface=\\:\\:", "tcp:port=8080:interface=\\:\\::backlog=4096"),
    ("tcp6:8080", "tcp6:8080:backlog=4096"),
    ("ssl:8443:privateKey=key.pem", "ssl:8443:privateKey=key.pem:backlog=4096"),
    ("tls:/etc/hps/certs:port=8443", "tls:/etc/hps/certs:port=8443:backlog=4096"),
])
def test_tcp_endpoints_get_the_default(description: str, expected: str) -> None:
    """TCP-based listen endpoints (tcp, tcp6, ssl, tls) get backlog=4096 appended."""
    assert with_backlog(description) == expected


@pytest.mark.parametrize("description", [
    "tcp:8080:backlog=5",  # the operator's value wins
    "tcp:8080:0.0.0.0:5",  # ... also given by position
    "tcp6:8080:5",
    "ssl:8443:key.pem:cert.pem:SSLv23_METHOD:0.0.0.0:5",
    "unix:/run/hps.sock",  # not TCP: left alone
    "systemd:domain=INET:index=0",
])
def test_other_descriptions_are_unchanged(description: str) -> None:
    """An endpoint that sets its own backlog, or is not TCP, is left as written."""
    assert with_backlog(description) == description


@pytest.mark.parametrize(("description", "backlog"), [
    ("tcp:0:interface=127.0.0.1", LISTEN_BACKLOG), ("tcp:0:backlog=7", 7)])
def test_twisted_listens_with_the_result(description: str, backlog: int) -> None:
    """Twisted's endpoint parser accepts the rewritten description and listens with that
    backlog."""
    reactor = MemoryReactor()
    serverFromString(reactor, with_backlog(description)).listen(Factory())
    (_, _, listened_with, _), = reactor.tcpServers
    assert listened_with == backlog


LISTEN_ERRORS = [
    ("tcp:notaport", "cannot use listen endpoint 'tcp:notaport'"),
    ("bogus:1", "cannot use listen endpoint 'bogus:1'"),
]


@pytest.mark.parametrize(("listen", "message"), LISTEN_ERRORS)
def test_bad_listen_endpoint_is_one_line(tree: Tree, capfd, listen: str, message: str) -> None:
    parsed = Options()
    parsed.parseOptions(["--root", str(tree.root), "--listen", listen])
    config = parsed.config
    with pytest.raises(SystemExit) as ended:
        make_service(config, Reactor())
    assert ended.value.code == 2
    err = capfd.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


