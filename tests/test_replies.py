"""Answers through the real site in memory: retry later, and answering when work is done."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.web.resource import Resource
from twisted.web.server import Request

from hps import replies
from tests.support.memory import Harness
from tests.support.server import Tree


class Waiting(Resource):
    """A page answered when ``waiting`` fires; remembers what happened to it."""

    isLeaf = True

    def __init__(self, waiting: Deferred, render=lambda outcome: b"done: %r\n" % (outcome,)):
        super().__init__()
        self.waiting, self.render_outcome = waiting, render

    def render_GET(self, request: Request) -> int:
        return replies.answer_when(request, self.waiting,
                                   lambda outcome: self.render_outcome(outcome))


def serve(harness, tree: Tree, page: Resource) -> Harness:
    tree.add("key-auth", "1.0.0")
    server = harness(tree.root)
    server.site.resource = page
    return server


def test_retry_later_is_one_answer(tree: Tree, harness) -> None:
    class Busy(Resource):
        isLeaf = True

        def render_GET(self, request: Request) -> bytes:
            return replies.retry_later(request, 7)

    reply = serve(harness, tree, Busy()).get("/anything")
    assert (reply.status, reply.header("Retry-After")) == (503, "7")
    assert reply.header("Content-Type") == "text/plain; charset=utf-8"
    assert reply.header("Cache-Control") == "no-store"
    assert reply.body == b"not available yet, retry\n"
    assert reply.header("Content-Length") == str(len(reply.body))


def test_the_answer_is_written_when_the_work_is_done(tree: Tree, harness) -> None:
    waiting: Deferred = Deferred()
    server = serve(harness, tree, Waiting(waiting))
    client = server.connect().send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert client.received() == b""
    waiting.callback(42)
    server.settle()
    assert client.take().body == b"done: 42\n"


def test_a_client_that_leaves_cancels_its_wait(tree: Tree, harness) -> None:
    cancelled: list[Deferred] = []
    waiting: Deferred = Deferred(cancelled.append)
    server = serve(harness, tree, Waiting(waiting))
    client = server.connect().send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    client.close()
    server.settle()
    assert cancelled == [waiting]
    assert "Unhandled" not in server.log()


def test_a_failing_answer_is_logged_once_and_becomes_a_retry(tree: Tree, harness) -> None:
    def broken(outcome: object) -> bytes:
        raise RuntimeError("the page could not be made")

    server = serve(harness, tree, Waiting(succeed(None), broken))
    reply = server.get("/")
    assert (reply.status, reply.header("Retry-After")) == (503, "1")
    assert server.log().count("RuntimeError: the page could not be made") == 1
