"""Cases for guardrails/semgrep/http-timeout.yml."""

import httpx
import requests
from httpx import AsyncClient

from services.kit.http import create_async_client, create_client


def clients(url: str, provider: object) -> None:
    # ruleid: http-no-timeout
    httpx.Client(base_url=url)
    # ruleid: http-no-timeout
    AsyncClient(base_url=url)
    # ruleid: http-no-timeout
    httpx.Client(base_url=url, timeout=None)
    # ruleid: http-no-timeout
    httpx.Client(base_url=url, timeout=httpx.Timeout(None))
    # ok: http-no-timeout
    httpx.Client(base_url=url, timeout=2.0)
    # ok: http-no-timeout
    httpx.Client(base_url=url, timeout=httpx.Timeout(0.8, connect=0.2))
    # ruleid: http-no-timeout
    create_client("feed", "profiles", url, tracer_provider=provider)
    create_client(
        "chain-c",
        "chain-a",
        url,
        # ruleid: http-no-timeout
        timeout=None,
        tracer_provider=provider,
    )
    # ok: http-no-timeout
    create_async_client("feed", "profiles", url, timeout=0.8, tracer_provider=provider)


def calls(url: str, client: httpx.Client, options: dict[str, float]) -> None:
    # ruleid: http-no-timeout
    requests.get(url)
    # ruleid: http-no-timeout
    requests.post(url, json={})
    # ok: http-no-timeout
    requests.get(url, timeout=3)
    # ruleid: http-no-timeout
    httpx.get(url)
    # ok: http-no-timeout
    httpx.get(url, timeout=3)
    # ok: http-no-timeout
    httpx.get(url, **options)
    # ruleid: http-no-timeout
    client.get("/profiles/1", timeout=None)
    # ok: http-no-timeout
    client.get("/profiles/1")
    # ok: http-no-timeout
    options.get("timeout", None)
