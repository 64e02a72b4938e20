"""The status page in a real headless Chromium: it refreshes by itself from /api/status.

Chromium is Debian's package (``scripts/ensure-chromium.sh``, run by ``make test``),
driven by playwright; playwright's own browser download is never used.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import Client
from quicflow.testing import ClientFor

from .service import TestEcho
from .test_metrics_endpoint import http_get

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and shutil.which("chromium") is None,
    reason="Debian's chromium is missing: run scripts/ensure-chromium.sh (make test does)",
)


async def test_status_json_describes_clients_and_metrics() -> None:
    """Check that /api/status lists the connected client with address, state and traffic,
    and carries the metrics snapshot."""
    harness = ClientFor(
        [TestEcho()], server_options={"metrics_port": 0}, client_options={"client_id": "j1"}
    )
    async with harness as client:
        await EchoStub(client).say(EchoRequest(text="x"))
        port = harness.server.metrics_port
        assert port is not None
        status, body = await http_get(port, "/api/status")
        assert status == 200
        doc = json.loads(body)
        [entry] = doc["clients"]
        assert entry["client_id"] == "j1"
        assert entry["address"].startswith("127.0.0.1:")
        assert entry["state"] == "active"
        assert entry["calls_in"] == 1 and entry["bytes_in"] > 0
        assert doc["metrics"]["handled"]["/echo.Echo/Say"]["finished"] == {"OK": 1}
        assert doc["metrics"]["connected_clients"] == 1
        assert doc["server"]["port"] == harness.server.port


async def test_page_shows_a_client_that_connects_and_drops_one_that_leaves() -> None:
    """Check, in one open page without reloading, that a client that just connected gets a
    row, one that left loses its row, and the totals show the calls made."""
    from playwright.async_api import async_playwright

    harness = ClientFor(
        [TestEcho()], server_options={"metrics_port": 0}, client_options={"client_id": "alpha"}
    )
    async with harness as alpha, async_playwright() as pw:
        port = harness.server.metrics_port
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            page.set_default_timeout(15_000)
            await page.goto(f"http://127.0.0.1:{port}/?poll_ms=200")
            await page.wait_for_selector('tr[data-client-id="alpha"]')
            assert await page.title() == "QuicFlow status"

            bravo = Client(harness.client_config(client_id="bravo"))
            await bravo.connect()
            try:
                for i in range(3):
                    await EchoStub(bravo).say(EchoRequest(text=str(i)))
                row = await page.wait_for_selector('tr[data-client-id="bravo"]')
                assert row is not None
                await alpha.close()
                await page.wait_for_selector('tr[data-client-id="alpha"]', state="detached")
                await page.wait_for_function(
                    "document.querySelector('#methods tbody').textContent"
                    ".includes('/echo.Echo/Say')"
                )
                cells = await page.locator('tr[data-client-id="bravo"] td').all_text_contents()
                assert cells[0] == "bravo"
                assert cells[1].startswith("127.0.0.1:")
                assert cells[2] == "active"
                assert cells[5] == "3"  # calls in
                assert await page.locator("#client-count").text_content() == "1"
            finally:
                await bravo.close()
        finally:
            await browser.close()
