"""Unit: the replies written before twisted.web is involved are whole, closing responses."""

from __future__ import annotations

import pytest

from hps.canned import BAD_HOST, HEAD_TOO_BIG, HEAD_TOO_SLOW, SHED, TOO_LARGE, canned
from tests.support.memory import parse


@pytest.mark.parametrize("reply", [SHED, TOO_LARGE, HEAD_TOO_SLOW, HEAD_TOO_BIG, BAD_HOST])
def test_a_canned_reply_is_one_whole_closing_response(reply) -> None:
    status, body, _ = reply
    response, rest = parse(canned(reply))
    assert response.status == int(status[:3]) and response.body == body and rest == b""
    assert response.header("Connection") == "close"
    assert response.header("Content-Type") == "text/plain; charset=utf-8"
    assert (response.header("Server"), response.header("X-Content-Type-Options")) == (
        "hps", "nosniff")


def test_shedding_says_when_to_retry_and_head_gets_no_body() -> None:
    response, _ = parse(canned(SHED))
    assert response.header("Retry-After") == "1"
    head = canned(SHED, head=True)
    assert head.endswith(b"\r\n\r\n") and int(parse(head, "HEAD")[0].header("Content-Length")) > 0
