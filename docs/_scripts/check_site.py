"""Browser check of the built site and of a reproduction's HTML report, in headless Chromium.

Usage: ``python docs/_scripts/check_site.py SITE_DIR REPORT_HTML --out DIR`` (``make docs-check``).

- Serves SITE_DIR on a loopback port and crawls every page reachable from the home page: each internal link
  must resolve, each ``#anchor`` must exist on its target page, each image must load.
- Opens every page and the report in Chromium (selenium with Debian's chromium and chromium-driver): the
  browser console must have no errors and every ``<img>`` must have decoded (naturalWidth > 0).
- Saves a screenshot of each page under DIR/screenshots/ and writes DIR/check.json.
Exits 1 with a list of problems when anything fails.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import shutil
import sys
import threading
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

WIDTH, MAX_HEIGHT = 1280, 5000


class _Links(HTMLParser):
    """hrefs, image sources and element ids of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        if values.get("name") and tag == "a":
            self.ids.add(values["name"])
        if tag == "a" and values.get("href"):
            self.links.append(values["href"])
        if tag == "img" and values.get("src"):
            self.images.append(values["src"])


def _parse(html: str) -> _Links:
    parser = _Links()
    parser.feed(html)
    return parser


def _fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback only
            body = response.read()
            kind = response.headers.get_content_type()
            return response.status, body.decode("utf-8", "replace") if kind == "text/html" else ""
    except urllib.error.HTTPError as error:
        return error.code, ""


def _page_url(url: str) -> str:
    """One name per page: ``dir/index.html`` and ``dir/`` are the same page."""
    page, _ = urldefrag(url)
    return page.removesuffix("index.html")


def crawl(root: str) -> tuple[list[str], list[str]]:
    """(pages found, problems): every internal link, anchor and image of the site under ``root``."""
    pages: dict[str, _Links] = {}
    queue: list[tuple[str, str]] = [(root, "the home page")]
    problems: list[str] = []
    while queue:
        url, referrer = queue.pop()
        if url in pages:
            continue
        status, html = _fetch(url)
        if status != 200:
            problems.append(f"{referrer}: link to {url} does not resolve (HTTP {status})")
            continue
        pages[url] = parsed = _parse(html)
        for src in parsed.images:
            if not src.startswith("data:") and _fetch(urljoin(url, src))[0] != 200:
                problems.append(f"{url}: image {src} does not load")
        for href in parsed.links:
            target = urljoin(url, href)
            if not target.startswith(root):
                continue  # external: not checked (the check runs offline)
            page = _page_url(target)
            if page.endswith(("/", ".html")):
                queue.append((page, url))
            elif _fetch(page)[0] != 200:
                problems.append(f"{url}: link {href} does not resolve")
    for url, parsed in pages.items():
        for href in parsed.links:
            target = urljoin(url, href)
            page, anchor = _page_url(target), urldefrag(target)[1]
            if (
                target.startswith(root)
                and anchor
                and page in pages
                and unquote(anchor) not in pages[page].ids
            ):
                problems.append(f"{url}: link {href} points at a missing anchor")
    return sorted(pages), problems


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={WIDTH},900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def browse(driver, url: str, shot: Path) -> list[str]:
    """Console errors and broken images of one page; saves its screenshot."""
    driver.set_window_size(WIDTH, 900)
    driver.get(url)
    driver.execute_script("return document.fonts ? document.fonts.ready : null")
    broken = driver.execute_script(
        "return Array.from(document.images).filter(i => i.complete && i.naturalWidth === 0).map(i => i.src)"
    )
    pending = driver.execute_script("return Array.from(document.images).filter(i => !i.complete).length")
    height = min(MAX_HEIGHT, int(driver.execute_script("return document.documentElement.scrollHeight")))
    driver.set_window_size(WIDTH, max(height, 600))
    driver.save_screenshot(str(shot))
    problems = [f"{url}: image {src[:80]} did not load" for src in broken]
    if pending:
        problems.append(f"{url}: {pending} images still loading")
    for entry in driver.get_log("browser"):
        # the browser asks every server for /favicon.ico by itself; a page that links no icon is not broken
        if entry.get("level") == "SEVERE" and "/favicon.ico" not in entry.get("message", ""):
            problems.append(f"{url}: console error: {entry.get('message')}")
    return problems


def _serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def _shot_name(url: str, root: str) -> str:
    path = urlparse(url).path[len(urlparse(root).path) :].strip("/")
    return (path.replace("/", "_").removesuffix(".html") or "index") + ".png"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path)
    parser.add_argument("report", type=Path)
    parser.add_argument("--out", type=Path, default=Path("build/docs-check"))
    args = parser.parse_args()
    shots = args.out / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    server, root = _serve(args.site)
    report_server, report_root = _serve(args.report.parent)
    try:
        pages, problems = crawl(root)
        report_url = report_root + args.report.name
        report_status, report_html = _fetch(report_url)
        if report_status != 200:
            problems.append(f"{args.report}: HTTP {report_status}")
        report = _parse(report_html)
        for href in report.links:
            if href.startswith("#") and unquote(href[1:]) not in report.ids:
                problems.append(f"{args.report.name}: link {href} points at a missing anchor")
        driver = _driver()
        try:
            for url in pages:
                problems += browse(driver, url, shots / _shot_name(url, root))
            problems += browse(driver, report_url, shots / "reproduction_report.png")
        finally:
            driver.quit()
    finally:
        server.shutdown()
        report_server.shutdown()
    summary = {
        "pages": len(pages),
        "report": str(args.report),
        "problems": problems,
        "screenshots": str(shots),
    }
    (args.out / "check.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"checked {len(pages)} pages and {args.report.name}; screenshots in {shots}")
    for problem in problems:
        print("  FAIL", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
