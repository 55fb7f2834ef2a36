"""Per-service figures for drill verify, measured against ground truth after the load."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from drill import compose
from drill.native import LabConfig

# The provider's published rule for how profiles change: the judge recomputes it.
from services.profiles.models import profile_revision, revision_at

# ISO 4217 minor units of the currencies the payment client sends. Kept apart from the
# ledger's own table on purpose: the checker must not move when a participant edits the service.
MINOR_UNITS = {"USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "JPY": 0}
# Treasury's published reference rates into USD, fixed for the lab; apart from the ledger's copy
# (services/ledger/money.py) for the same reason: a ledger that books at another rate is wrong.
REFERENCE_RATES_TO_USD = {
    "EUR": Decimal("1.0837"),
    "GBP": Decimal("1.2674"),
    "CHF": Decimal("1.1298"),
    "JPY": Decimal("0.006712"),
}
BASE_CURRENCY = "USD"
FX_FLAG = "ledger.fx_conversion"


def _decimal_json(response: httpx.Response) -> Any:
    return json.loads(response.text, parse_float=Decimal)


def read_truth(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def conversion_rule(flags_path: Path) -> Callable[[str], bool]:
    """Whether the run's flags had the ledger convert an account's payments into USD.

    The ledger evaluates the flag per payment with the account as targeting key, so a share
    (flagd's fractional) is decided here by flagd's own targeting rules on the same key.
    """
    document = json.loads(flags_path.read_text()) if flags_path.exists() else {"flags": {}}
    definition = document["flags"].get(FX_FLAG)
    if not definition or definition.get("state", "ENABLED") != "ENABLED":
        return lambda account: False
    variants: dict[str, Any] = definition.get("variants", {})
    default = str(definition.get("defaultVariant"))
    rule = definition.get("targeting")
    if not rule:
        everyone = bool(variants.get(default, False))
        return lambda account: everyone

    # The same evaluator as the ledger's flagd provider; imported here, as drill's CLI does.
    from openfeature.contrib.tools.flagd.core.targeting import targeting
    from openfeature.evaluation_context import EvaluationContext

    def converts(account: str) -> bool:
        variant = targeting(FX_FLAG, rule, EvaluationContext(targeting_key=account))
        return bool(variants.get(str(variant) if variant is not None else default, False))

    return converts


@dataclass(frozen=True)
class Booking:
    """The posting a payment must make: its account, direction, currency and amount."""

    account_id: str
    direction: str
    currency: str
    amount: Decimal  # unsigned, at the booked currency's minor unit

    @property
    def signed(self) -> Decimal:
        return self.amount if self.direction == "credit" else -self.amount


def expected_booking(record: dict[str, Any], convert: bool) -> Booking:
    """What a payment the client sent must book: with conversion on, a non-USD payment is
    booked in USD at the reference rate; amounts round half-even to the booked minor unit."""
    currency, rate = record["currency"], Decimal(1)
    if convert and currency != BASE_CURRENCY:
        currency, rate = BASE_CURRENCY, REFERENCE_RATES_TO_USD[currency]
    quantum = Decimal(1).scaleb(-MINOR_UNITS[currency])
    amount = (Decimal(record["amount"]) * rate).quantize(quantum, rounding=ROUND_HALF_EVEN)
    return Booking(record["account_id"], record["direction"], currency, amount)


def _served_balances(client: httpx.Client, account: str) -> dict[str, Decimal]:
    response = client.get(f"/accounts/{account}/balances")
    if response.status_code == 404:
        return {}
    response.raise_for_status()
    return {b["currency"]: Decimal(b["amount"]) for b in _decimal_json(response)["balances"]}


def _postings(client: httpx.Client, account: str) -> list[dict[str, Any]]:
    postings: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        response = client.get(
            f"/accounts/{account}/transactions", params={"after": after, "limit": 1000}
        )
        response.raise_for_status()
        page = response.json()
        postings.extend(page["data"])
        after = page["next_after"]
    return postings


def _misbooked(posting: dict[str, Any], sent: dict[str, Booking]) -> bool:
    """A posting no client sent, or one whose account, side, currency or amount is not the
    booking its payment requires."""
    expected = sent.get(posting.get("idempotency_key") or "")
    if expected is None:
        return True
    booked = (posting["account_id"], posting["direction"], posting["currency"])
    if booked != (expected.account_id, expected.direction, expected.currency):
        return True
    try:
        return Decimal(posting["amount"]) != expected.amount
    except ArithmeticError:
        return True


def ledger_figures(
    client: httpx.Client, records: list[dict[str, Any]], converts: Callable[[str], bool]
) -> dict[str, float]:
    """Balances and postings of the records' accounts against the bookings the records require."""
    sent = {r["key"]: expected_booking(r, converts(r["account_id"])) for r in records}
    expected: dict[tuple[str, str], Decimal] = {}
    for record in records:
        if record["outcome"] == "accepted":
            booking = sent[record["key"]]
            key = (booking.account_id, booking.currency)
            expected[key] = expected.get(key, Decimal(0)) + booking.signed
    drift = Decimal(0)
    duplicates = misbooked = 0
    for account in sorted({record["account_id"] for record in records}):
        served = _served_balances(client, account)
        for currency in set(served) | {c for a, c in expected if a == account}:
            drift += abs(served.get(currency, Decimal(0)) - expected.get((account, currency), 0))
        postings = _postings(client, account)
        keys = Counter(p["idempotency_key"] for p in postings if p["idempotency_key"])
        duplicates += sum(n - 1 for n in keys.values())
        misbooked += sum(_misbooked(p, sent) for p in postings)
    return {
        "ledger.balance_drift": float(drift),
        "ledger.duplicate_postings": float(duplicates),
        "ledger.misbooked_postings": float(misbooked),
        "ledger.unconfirmed_payments": float(sum(r["outcome"] == "unknown" for r in records)),
        "ledger.retried_payments": float(sum(r["attempts"] > 1 for r in records)),
        "ledger.payments": float(sum(r["outcome"] == "accepted" for r in records)),
    }


def collect_ledger(base_url: str, truth_path: Path, config: LabConfig) -> dict[str, float]:
    """The ledger's figures for a run, from the clients' records and the flags the run set."""
    records = read_truth(truth_path)
    converts = conversion_rule(truth_path.parent / "flags.json")
    with httpx.Client(base_url=base_url, timeout=30, trust_env=False) as client:
        return ledger_figures(client, records, converts)


# One small order, as a shopper would send it; an idle chain answers it in milliseconds.
PROBE_ORDER = {"customer_id": "drill-probe", "lines": [{"sku": "TEA-SENCHA", "quantity": 1}]}
PROBE_TIMEOUT_S = 3.0
# An order answered "pending" is settled off the request path (the customer check runs later);
# once the load has stopped its reservation must be held or released within this.
SETTLE_S = 10.0
RESERVATIONS_PER_READ = 100
# Locust cuts off the requests in flight when it stops. An order sent this long before it
# began stopping had time for an answer or the checkout's 2 s timeout; a later one may not.
CUT_OFF_S = 5.0


def order_answered(base_url: str) -> bool:
    """Whether chain-a takes one order within the probe timeout."""
    try:
        with httpx.Client(base_url=base_url, timeout=PROBE_TIMEOUT_S, trust_env=False) as client:
            return client.post("/orders", json=PROBE_ORDER).status_code in (200, 201, 202)
    except httpx.HTTPError:
        return False


@dataclass
class ChainTruth:
    """The orders the shoppers sent and the answers they got (by the shopper's ref)."""

    sent: dict[str, dict[str, Any]]
    answered: dict[str, dict[str, Any]]
    stopping_at: float  # when Locust began to stop its users (epoch seconds)

    def unanswered(self) -> int:
        """Orders sent well before the load stopped that never got an answer or a timeout."""
        return sum(
            ref not in self.answered and record["at"] < self.stopping_at - CUT_OFF_S
            for ref, record in self.sent.items()
        )


def chain_truth(truth_path: Path) -> ChainTruth:
    sent: dict[str, dict[str, Any]] = {}
    answered: dict[str, dict[str, Any]] = {}
    stopping_at = math.inf  # no mark: Locust was killed, so every order had its chance
    for record in read_truth(truth_path):
        if record["event"] == "sent":
            sent[record["ref"]] = record
        elif record["event"] == "answered":
            answered[record["ref"]] = record
        elif record["event"] == "stopping":
            stopping_at = min(stopping_at, record["at"])
    return ChainTruth(sent, answered, stopping_at)


def collect_chain(base_url: str, truth_path: Path, config: LabConfig) -> dict[str, float]:
    """Whether the chain takes an order after the load; answers missing; totals that are wrong.

    Ground truth is the shopper's order and the total its own price list and tax rates give;
    the answer only says what the shop claimed.
    """
    truth = chain_truth(truth_path)
    mismatches = 0
    for ref, answer in truth.answered.items():
        if answer["http_status"] in (200, 201, 202):
            total = answer.get("total")
            expected = Decimal(truth.sent[ref]["expected_total"])
            if total is None or Decimal(str(total)) != expected:
                mismatches += 1
    return {
        "chain.orders_after_load": 1.0 if order_answered(base_url) else 0.0,
        "chain.unanswered_orders": float(truth.unanswered()),
        "chain.total_mismatches": float(mismatches),
    }


def _reservations(client: httpx.Client, order_ids: list[str]) -> dict[str, list[str]]:
    """Each order's reservation statuses, as chain-c's stock book holds them."""
    statuses: dict[str, list[str]] = {order_id: [] for order_id in order_ids}
    for start in range(0, len(order_ids), RESERVATIONS_PER_READ):
        chunk = order_ids[start : start + RESERVATIONS_PER_READ]
        response = client.get("/reservations", params={"order_id": chunk})
        response.raise_for_status()
        for reservation in response.json()["data"]:
            statuses.setdefault(reservation["order_id"], []).append(reservation["status"])
    return statuses


def collect_stock(base_url: str, truth_path: Path, config: LabConfig) -> dict[str, float]:
    """Orders of customers on hold that kept stock, and orders not holding stock exactly once.

    A confirmed order must hold one reservation. An order answered "pending" must settle within
    SETTLE_S of the load's end: held if the customer may order, released if on hold.
    """
    truth = chain_truth(truth_path)
    taken = {
        answer["order_id"]: (truth.sent[ref]["customer_id"].startswith("hold-"), answer["status"])
        for ref, answer in truth.answered.items()
        if answer["http_status"] in (200, 201, 202) and answer.get("order_id")
    }
    order_ids = sorted(taken)
    with httpx.Client(base_url=base_url, timeout=30, trust_env=False) as client:
        deadline = time.monotonic() + SETTLE_S
        statuses = _reservations(client, order_ids)
        while time.monotonic() < deadline and any("pending" in s for s in statuses.values()):
            time.sleep(0.5)
            statuses = _reservations(client, order_ids)
    held_kept = not_once = confirmed = 0
    for order_id, (on_hold, status) in taken.items():
        holding = sum(s != "released" for s in statuses[order_id])
        if on_hold and (status == "confirmed" or holding):
            held_kept += 1
        if status == "confirmed" or not on_hold:
            confirmed += 1
            not_once += holding != 1 or "pending" in statuses[order_id]
    return {
        "chain.held_orders_confirmed": float(held_kept),
        "chain.orders_not_held_once": float(not_once),
        "chain.confirmed_orders": float(confirmed),
    }


def probe_chain(base_url: str) -> str | None:
    """Steady state: a chain left stuck by an earlier run must not be measured again."""
    if order_answered(base_url):
        return None
    return (
        f"chain-a at {base_url} answers /readyz but took no order within {PROBE_TIMEOUT_S:g} s: "
        "the chain is stuck (an earlier run?). Restart it with `drill restart chain`"
    )


FEED_ROUTE = "/feed/{user_id}"
# The service's own histograms, as (metric, labels); read before and after the load.
_FEED_HISTOGRAMS = {
    "db": ("db_queries_per_request", {"service": "feed", "route": FEED_ROUTE}),
    "calls": ("http_client_calls_per_request", {"service": "feed", "route": FEED_ROUTE}),
    "lag": ("event_loop_lag_seconds", {"service": "feed"}),
}
Buckets = dict[float, float]


def _histograms(base_url: str) -> dict[str, dict[str, Any]]:
    """Cumulative bucket counts and sums of the feed's work histograms, from /metrics."""
    # Generous: a service whose event loop is stalled answers once it has worked off its queue.
    response = httpx.get(f"{base_url}/metrics", timeout=180, trust_env=False)
    response.raise_for_status()
    found: dict[str, dict[str, Any]] = {
        key: {"buckets": {}, "sum": 0.0} for key in _FEED_HISTOGRAMS
    }
    for family in text_string_to_metric_families(response.text):
        for key, (name, labels) in _FEED_HISTOGRAMS.items():
            if family.name != name:
                continue
            for sample in family.samples:
                if any(sample.labels.get(k) != v for k, v in labels.items()):
                    continue
                if sample.name == f"{name}_bucket":
                    found[key]["buckets"][float(sample.labels["le"])] = sample.value
                elif sample.name == f"{name}_sum":
                    found[key]["sum"] = sample.value
    return found


def _delta(after: dict[str, Any], before: dict[str, Any]) -> tuple[Buckets, float, float]:
    buckets = {le: n - before["buckets"].get(le, 0.0) for le, n in after["buckets"].items()}
    count = buckets.get(math.inf, 0.0)
    return buckets, count, after["sum"] - before["sum"]


def _highest_bound(buckets: Buckets) -> float:
    """The upper bound of the highest bucket any observation fell in (exact for 0..5)."""
    previous, highest = 0.0, math.nan
    for le in sorted(buckets):
        if buckets[le] > previous:
            highest = le
        previous = buckets[le]
    return highest


def snapshot_feed(base_url: str, run_dir: Path) -> None:
    """The feed's work histograms before the load, so the figures cover this run only."""
    (run_dir / "feed-before.json").write_text(json.dumps(_histograms(base_url), default=str))


# How old an author shown on a timeline may be, in seconds past the moment the provider's
# profile changed. The reference fix caches a profile for its TTL of 10 s (+10% jitter) after a
# fetch that takes up to 2 s with retries: 13 s at most. 20 s leaves 7 s for a loaded machine,
# and is still shorter than the provider's period (REVISION_PERIOD_S), so a cache that never
# refreshes shows stale authors within one 30 s run.
PROFILE_STALENESS_S = 20.0
# Timeline reads checked against the database and the provider: all of a normal run's reads.
MAX_READS_CHECKED = 2000
PAGE_SIZE = 10
_PAGE_SQL = text(
    "SELECT p.id, p.author_id FROM feed_posts p"
    " JOIN feed_follows f ON f.followee_id = p.author_id"
    " WHERE f.follower_id = :user_id"
    " ORDER BY p.posted_at DESC, p.id DESC LIMIT :limit"
)
_AVATAR_REVISION = re.compile(r"/(\d+)\.png$")
log = logging.getLogger("drill.collectors")


def feed_database_url(state_dir: Path) -> str | None:
    """The lab's feed database as the judge reads it: the environment's, else the native
    lab's SQLite file. (Compose keeps Postgres internal: set DRILL_FEED_DATABASE_URL to a
    published port to judge a compose lab's posts.)"""
    url = os.environ.get("DRILL_FEED_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url
    sqlite = state_dir / "feed.db"
    return f"sqlite:///{sqlite.resolve()}" if sqlite.exists() else None


def expected_pages(url: str, user_ids: set[int]) -> dict[int, list[tuple[int, int]]]:
    """Each reader's first page as (post id, author id), newest first, from a direct query."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                uid: [(row[0], row[1]) for row in conn.execute(
                    _PAGE_SQL, {"user_id": uid, "limit": PAGE_SIZE}
                )]
                for uid in sorted(user_ids)
            }  # fmt: skip
    finally:
        engine.dispose()


def _timestamp(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _same_profile(author: dict[str, Any], author_id: int, revision: int) -> bool:
    expected = profile_revision(author_id, revision)
    served_at = _timestamp(author.get("updated_at"))
    return (
        author.get("display_name") == expected.display_name
        and author.get("avatar_url") == expected.avatar_url
        and author.get("verified") == expected.verified
        and served_at is not None
        and abs(served_at - expected.updated_at.timestamp()) < 0.001
    )


def judge_author(author: Any, author_id: int, started: float, finished: float) -> str:
    """ok, missing, wrong or stale: the author shown against the provider's profile then."""
    if not isinstance(author, dict) or not all(
        author.get(key) for key in ("display_name", "avatar_url", "updated_at")
    ):
        return "missing"
    if author.get("id") != author_id:
        return "wrong"
    newest = revision_at(author_id, finished)
    oldest_allowed = revision_at(author_id, started - PROFILE_STALENESS_S)
    if any(_same_profile(author, author_id, r) for r in range(oldest_allowed, newest + 1)):
        return "ok"
    # An older revision, if the avatar names one and everything else matches it exactly.
    match = _AVATAR_REVISION.search(str(author.get("avatar_url")))
    if match and int(match.group(1)) < oldest_allowed:
        if _same_profile(author, author_id, int(match.group(1))):
            return "stale"
    return "wrong"


def judge_timelines(
    reads: list[dict[str, Any]], pages: dict[int, list[tuple[int, int]]] | None
) -> dict[str, float]:
    """Reads whose authors are missing, wrong or stale, and whose posts differ from the DB's."""
    counts = Counter[str]()
    for read in reads:
        posts = read["posts"]
        started, finished = read["started"], read["finished"]
        verdicts = {
            judge_author(post.get("author"), post.get("author_id"), started, finished)
            for post in posts
        }
        counts.update(verdicts - {"ok"})
        if pages is not None:
            served = [(post.get("id"), post.get("author_id")) for post in posts]
            counts["posts"] += served != pages.get(read["user_id"])
    return {
        "feed.reads_checked": float(len(reads)),
        "feed.authors_missing": float(counts["missing"]),
        "feed.authors_wrong": float(counts["wrong"]),
        "feed.authors_stale": float(counts["stale"]),
        "feed.posts_wrong": float(counts["posts"]) if pages is not None else math.nan,
    }


def collect_feed(base_url: str, truth_path: Path, config: LabConfig) -> dict[str, float]:
    """Statements and outgoing calls per timeline request, event-loop lag, and whether the
    timelines the readers were shown hold the right posts and current authors."""
    before_path = truth_path.parent / "feed-before.json"
    empty = {key: {"buckets": {}, "sum": 0.0} for key in _FEED_HISTOGRAMS}
    raw: dict[str, Any] = json.loads(before_path.read_text()) if before_path.exists() else empty
    before = {
        key: {"buckets": {float(le): n for le, n in v["buckets"].items()}, "sum": v["sum"]}
        for key, v in raw.items()
    }
    after = _histograms(base_url)
    figures: dict[str, float] = {}
    db, requests, statements = _delta(after["db"], before["db"])
    _, _, calls = _delta(after["calls"], before["calls"])
    lag, ticks, lag_sum = _delta(after["lag"], before["lag"])
    figures["feed.timeline_requests"] = requests
    figures["feed.db_queries_per_request_max"] = _highest_bound(db)
    figures["feed.db_queries_per_request_mean"] = statements / requests if requests else math.nan
    figures["feed.external_calls_per_request_mean"] = calls / requests if requests else math.nan
    figures["feed.event_loop_lag_mean_ms"] = 1000 * lag_sum / ticks if ticks else math.nan
    figures["feed.event_loop_lag_max_ms"] = 1000 * _highest_bound(lag)
    figures["feed.external_calls_per_request_max"] = _highest_bound(
        _delta(after["calls"], before["calls"])[0]
    )
    figures.update(_judge_truth(truth_path, config))
    return figures


def expected_pages_in_compose(
    config: LabConfig, user_ids: set[int]
) -> dict[int, list[tuple[int, int]]]:
    """The same pages as expected_pages, read with psql inside the compose lab's postgres."""
    ids = ",".join(str(int(uid)) for uid in sorted(user_ids))
    rows = compose.query_postgres(
        config,
        f"SELECT u.uid, p.id, p.author_id FROM unnest(ARRAY[{ids}]::bigint[]) AS u(uid)"
        " CROSS JOIN LATERAL (SELECT p.id, p.author_id, p.posted_at FROM feed_posts p"
        " JOIN feed_follows f ON f.followee_id = p.author_id WHERE f.follower_id = u.uid"
        f" ORDER BY p.posted_at DESC, p.id DESC LIMIT {PAGE_SIZE}) p"
        " ORDER BY u.uid, p.posted_at DESC, p.id DESC",
    )
    pages: dict[int, list[tuple[int, int]]] = {uid: [] for uid in user_ids}
    for uid, post_id, author_id in rows:
        pages[int(uid)].append((int(post_id), int(author_id)))
    return pages


def _feed_pages(config: LabConfig, user_ids: set[int]) -> dict[int, list[tuple[int, int]]] | None:
    """Each reader's expected first page from the feed's database, wherever the lab keeps it."""
    url = feed_database_url(config.state_dir)
    try:
        if url is not None:
            return expected_pages(url, user_ids)
        if compose.use_compose(config):
            return expected_pages_in_compose(config, user_ids)
    except (SQLAlchemyError, compose.ComposeError) as exc:
        log.warning("feed database unreadable: %s", exc)
        return None
    log.warning("no feed database to judge posts against (DATABASE_URL unset, no SQLite)")
    return None


def _judge_truth(truth_path: Path, config: LabConfig) -> dict[str, float]:
    reads = [r for r in read_truth(truth_path) if r.get("kind") == "timeline"]
    if len(reads) > MAX_READS_CHECKED:
        reads = random.Random(truth_path.parent.name).sample(reads, MAX_READS_CHECKED)
    return judge_timelines(reads, _feed_pages(config, {read["user_id"] for read in reads}))


def triggers_acted(base_url: str) -> Counter[str]:
    """How often each trigger took its path in one service so far (GET /drill/triggers)."""
    # Generous: a service whose event loop is stalled answers once it has worked off its queue.
    response = httpx.get(f"{base_url}/drill/triggers", timeout=180, trust_env=False)
    response.raise_for_status()
    return Counter({flag: sum(variants.values()) for flag, variants in response.json().items()})


def load_acted(path: Path) -> Counter[str]:
    """What the load generator's own flag reads acted on (flags read by Locust's users)."""
    if not path.exists():
        return Counter()
    return Counter({flag: int(n) for flag, n in json.loads(path.read_text()).items()})


# Called after the load with the service's URL, the run's truth file and the lab.
Collector = Callable[[str, Path, LabConfig], dict[str, float]]
COLLECTORS: dict[str, Collector] = {
    "ledger": collect_ledger,
    "chain-a": collect_chain,
    "chain-c": collect_stock,
    "feed": collect_feed,
}
# Steady-state probes beyond /readyz: None when the service does real work, else what to do.
Probe = Callable[[str], str | None]
PROBES: dict[str, Probe] = {"chain-a": probe_chain}
# Called with the service's URL and the run directory just before the load starts.
Snapshot = Callable[[str, Path], None]
SNAPSHOTS: dict[str, Snapshot] = {"feed": snapshot_feed}
