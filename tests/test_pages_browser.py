"""The HTML pages in a real browser: links resolve, names are text, pages render."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.support.browser import dump_dom, screenshot
from tests.support.server import REPO


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href"]
        assert tag != "script", "no script may appear in our pages"

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(dom: str) -> Links:
    links = Links()
    links.feed(dom)
    return links


@pytest.mark.process
def test_every_link_on_every_page_works_and_the_landing_page_reads_right(
        serve, tmp_path: Path) -> None:
    """One real process for chromium to browse (both checks share it).

    Every page's links come from its served HTML; chromium parses one page of each
    kind (landing, index, a plugin's versions) and must find the same links, so the
    crawl does not start a browser per plugin. The browsers run at once."""
    server = serve("--root", str(REPO / "plugins"))
    seen: set[str] = set()
    queue = ["/"]
    kinds: dict[int, tuple[str, Links]] = {}
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        reply = server.get(path)
        assert reply.status == 200, path
        if (reply.header("Content-Type") or "").startswith("text/html"):
            links = parse(reply.body.decode())
            kinds.setdefault(path.count("/"), (path, links))
            queue += [h for h in links.hrefs if h.startswith("/")]
    assert sorted(kinds) == [1, 2, 3], "the landing page, the index and a plugin's page"
    modules = {p for p in seen if p.endswith("/plugin.wasm")}
    assert "/plugins/key-rate-limit/1.0.0/plugin.wasm" in modules
    assert len(modules) >= 5 and "/plugins/index.json" in seen

    pages = [path for path, _ in kinds.values()]
    with ThreadPoolExecutor(len(pages) + 1) as pool:
        shot = pool.submit(screenshot, server.url("/plugins/"), tmp_path / "plugins.png")
        parsed = pool.map(lambda path: parse(dump_dom(server.url(path))), pages)
        doms = dict(zip(pages, parsed, strict=True))
    for path, links in kinds.values():
        assert doms[path].hrefs == links.hrefs, path
    text = "".join(doms["/"].text)
    base = f"http://127.0.0.1:{server.port}"
    assert f"HIGRESS_ADMIN_WASM_PLUGIN_CUSTOM_IMAGE_URL_PATTERN={base}/plugins/" \
        "${name}/${version}/plugin.wasm" in text
    assert f"MCP_SERVER_WASM_IMAGE_URL={base}/plugins/mcp-server/1.0.0/plugin.wasm" in text
    assert re.search(r"Serving \d+ plugins", text)
    png = shot.result().read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
