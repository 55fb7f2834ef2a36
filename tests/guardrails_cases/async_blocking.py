"""Cases for guardrails/semgrep/async-blocking.yml (drill guardrails drops non-async ones)."""

import time
import urllib.request

import anyio.to_thread
import httpx
import requests
from fastapi import APIRouter, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

router = APIRouter()


@router.get("/feed/{user_id}")
async def feed(user_id: int, request: Request, session: Session) -> dict[str, object]:
    # ruleid: sync-db-in-async
    user = session.get(dict, user_id)
    profiles = request.app.state.profiles
    # ruleid: blocking-io-in-async
    response = profiles.get(f"/profiles/{user_id}", extensions={})
    # ruleid: blocking-io-in-async
    time.sleep(0.1)
    # ruleid: blocking-io-in-async
    requests.get("http://profiles/1", timeout=1)
    # ruleid: blocking-io-in-async
    httpx.post("http://profiles/1", json={}, timeout=1)
    # ruleid: blocking-io-in-async
    urllib.request.urlopen("http://profiles/1", timeout=1)
    # ruleid: sync-db-in-async
    with request.app.state.sessions() as db:
        # ruleid: sync-db-in-async
        db.execute(select(1))
    # ok: blocking-io-in-async
    answer = await request.app.state.client.get("/profiles/1")
    # ok: blocking-io-in-async
    value = request.headers.get("x-trace-id")
    # ok: blocking-io-in-async
    cached = {"a": 1}.get("a", 0)
    # ok: sync-db-in-async
    rows = await anyio.to_thread.run_sync(lambda: session.scalars(select(1)).all())

    def on_a_worker_thread() -> None:
        # ok: sync-db-in-async
        session.commit()
        # ok: blocking-io-in-async
        time.sleep(0.1)

    await anyio.to_thread.run_sync(on_a_worker_thread)
    return {"user": user, "r": response, "a": answer, "v": value, "c": cached, "rows": rows}


@router.get("/ledger/{account}")
def sync_route(account: str, session: Session) -> object:
    # ok: sync-db-in-async
    rows = session.scalars(select(1)).all()
    # ok: blocking-io-in-async
    time.sleep(0.1)
    return rows


async def undecorated(session: Session, client: httpx.Client) -> None:
    # ruleid: sync-db-in-async
    session.commit()
    # ruleid: blocking-io-in-async
    client.post("/orders", json={})
    # ok: blocking-io-in-async
    await client.post("/orders", json={})  # type: ignore[misc]


def sync_helper(session: Session) -> None:
    # ok: sync-db-in-async
    session.commit()

    async def inner() -> None:
        # ruleid: sync-db-in-async
        session.commit()

    print(inner)  # noqa: T201
