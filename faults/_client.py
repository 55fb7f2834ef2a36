"""Flag evaluation for services: OpenFeature with flagd's in-process FILE resolver."""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import OpenFeatureError
from openfeature.provider import ProviderStatus
from opentelemetry import trace
from prometheus_client import Counter, Gauge

from faults._catalog import DECOY, Catalog, FlagValue, load_catalog

log = logging.getLogger("faults")

# The provider logs a traceback on every poll while the file is bad; Flags says it once instead.
logging.getLogger("openfeature.contrib").setLevel(logging.CRITICAL)

FLAG_STATE_ERRORS = Counter(
    "drill_flag_state_errors",
    "Times the live flag state file could not be read; the last good flags stay in force",
    ["service"],
)
FLAG_STATE_OK = Gauge(
    "drill_flag_state_ok",
    "1 while the live flag state file is readable, 0 while the last good flags are in force",
    ["service"],
)

REVEAL_FLAG = "lab.reveal"

# Poll the state file every 200 ms: a flip reaches the service well within 1 s.
DEFAULT_POLL_MS = 200

_domains = itertools.count()


class Flags:
    """Typed flag reads for one service, backed by the live state file."""

    def __init__(
        self,
        state_file: Path,
        *,
        service: str,
        catalog: Catalog | None = None,
        poll_ms: int = DEFAULT_POLL_MS,
    ) -> None:
        self.catalog = catalog or load_catalog()
        self.state_file = Path(state_file)
        self.service = service
        self._poll_ms = poll_ms
        self._domain = f"drill-{service}-{next(_domains)}"
        self._overrides: dict[str, FlagValue] = {}
        # Evaluations of a trigger that served a variant other than off, so the code took the
        # trigger's path: drill verify's proof that a scenario's triggers acted. Kept off
        # /metrics on purpose: in the dark room no telemetry names a trigger.
        self._acted: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lock = threading.Lock()
        self._healthy: bool | None = None
        # Decoy flags the state file sets away from off: the kit evaluates only these per request.
        self._live_decoys: tuple[str, ...] = ()
        self._client = api.get_client(self._domain)
        self._provider: Any = None

    def start(self) -> None:
        """Attach the flagd provider; a missing or bad file leaves every flag at its default."""
        # Imported here: the provider pulls in grpc, which only a running service needs.
        from openfeature.contrib.provider.flagd import FlagdProvider
        from openfeature.contrib.provider.flagd.config import ResolverType

        self._provider = FlagdProvider(
            resolver_type=ResolverType.FILE,
            offline_flag_source_path=str(self.state_file),
            deadline_ms=self._poll_ms,
        )
        with contextlib.suppress(OpenFeatureError):
            # Raised when the file is missing or unreadable; the provider keeps polling for it.
            api.set_provider_and_wait(self._provider, domain=self._domain)
        self._healthy = self._client.get_provider_status() == ProviderStatus.READY
        self._refresh_decoys()
        FLAG_STATE_OK.labels(self.service).set(1 if self._healthy else 0)
        if not self._healthy:
            log.warning(
                "flag state %s missing or unreadable; every flag is at its default until it is",
                self.state_file,
            )
        # Handlers run at once for the current status; only later transitions log.
        self._client.add_handler(ProviderEvent.PROVIDER_ERROR, self._on_error)
        self._client.add_handler(ProviderEvent.PROVIDER_READY, self._on_ready)
        self._client.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, self._on_ready)

    def close(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None

    def _on_error(self, details: EventDetails) -> None:
        # The gauge first: whoever sees the error counted also sees the state as not ok.
        FLAG_STATE_OK.labels(self.service).set(0)
        FLAG_STATE_ERRORS.labels(self.service).inc()
        with self._lock:
            was_healthy, self._healthy = self._healthy, False
        if was_healthy is not False:
            log.error(
                "flag state %s unreadable (%s); keeping the last good flags",
                self.state_file,
                details.message,
            )

    def _on_ready(self, details: EventDetails) -> None:
        self._refresh_decoys()
        FLAG_STATE_OK.labels(self.service).set(1)
        with self._lock:
            was_healthy, self._healthy = self._healthy, True
        if was_healthy is False:
            log.info("flag state %s readable again; flags reloaded", self.state_file)

    def _refresh_decoys(self) -> None:
        """Re-read which decoy flags the state file sets for this service; an unreadable file
        keeps the last set. A decoy aimed at another service costs this one nothing."""
        try:
            flags = json.loads(self.state_file.read_text())["flags"]
            live = tuple(
                spec.key
                for spec in self.catalog.decoys()
                if _live_here(flags.get(spec.key), spec.default_variant, self.service)
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return
        with self._lock:
            self._live_decoys = live

    def live_decoys(self) -> tuple[str, ...]:
        """Decoy flags that may serve a value other than off (set live, or overridden in a test)."""
        with self._lock:
            live = self._live_decoys
            if not self._overrides:
                return live
            overridden = {
                key
                for key, value in self._overrides.items()
                if self.catalog[key].kind == DECOY and value != self.catalog[key].default_value
            }
            kept = tuple(key for key in live if key not in self._overrides)
        return kept + tuple(sorted(overridden))

    def value(self, key: str, context: Mapping[str, Any] | None = None) -> FlagValue:
        """The flag's value for this evaluation context (targetingKey picks a fractional bucket)."""
        spec = self.catalog[key]
        with self._lock:
            overridden = key in self._overrides
            value = self._overrides.get(key, spec.default_value)
        if not overridden:
            ctx = None
            if context:
                attributes = dict(context)
                targeting_key = attributes.pop("targetingKey", None)
                ctx = EvaluationContext(
                    targeting_key=None if targeting_key is None else str(targeting_key),
                    attributes=attributes,
                )
            value = self._evaluate(key, spec.default_value, ctx)
        if spec.kind == "trigger" and value != spec.default_value:
            with self._lock:
                self._acted[key, spec.variant_of(value)] += 1
            if self._revealing():
                # Debrief only: the span says which trigger shaped this request.
                trace.get_current_span().set_attribute(f"drill.trigger.{key}", value)
        elif spec.kind == DECOY and value != spec.default_value and self._revealing():
            # Debrief only, like triggers: the span names the decoy that shaped this request.
            trace.get_current_span().set_attribute(f"drill.decoy.{key}", value)
        return value

    def _evaluate(self, key: str, default: FlagValue, ctx: EvaluationContext | None) -> FlagValue:
        if isinstance(default, bool):
            return self._client.get_boolean_value(key, default, ctx)
        if isinstance(default, int):
            return self._client.get_integer_value(key, default, ctx)
        if isinstance(default, float):
            return self._client.get_float_value(key, default, ctx)
        return self._client.get_string_value(key, default, ctx)

    def _revealing(self) -> bool:
        with self._lock:
            if REVEAL_FLAG in self._overrides:
                return bool(self._overrides[REVEAL_FLAG])
        return REVEAL_FLAG in self.catalog and bool(
            self._evaluate(REVEAL_FLAG, self.catalog[REVEAL_FLAG].default_value, None)
        )

    def acted(self) -> dict[str, dict[str, int]]:
        """How often each trigger took its path so far, by flag and variant."""
        with self._lock:
            counts = dict(self._acted)
        acted: dict[str, dict[str, int]] = {}
        for (key, variant), n in sorted(counts.items()):
            acted.setdefault(key, {})[variant] = n
        return acted

    def enabled(self, key: str, context: Mapping[str, Any] | None = None) -> bool:
        return bool(self.value(key, context))

    def integer(self, key: str, context: Mapping[str, Any] | None = None) -> int:
        return int(self.value(key, context))

    def number(self, key: str, context: Mapping[str, Any] | None = None) -> float:
        return float(self.value(key, context))

    def text(self, key: str, context: Mapping[str, Any] | None = None) -> str:
        return str(self.value(key, context))

    @contextlib.contextmanager
    def override(self, values: Mapping[str, FlagValue]) -> Iterator[None]:
        """Force flag values in-process (tests), restoring the previous overrides on exit."""
        for key, value in values.items():
            spec = self.catalog[key]
            if not isinstance(value, spec.value_type):
                raise TypeError(f"{key} takes {spec.value_type.__name__}, got {value!r}")
        with self._lock:
            saved = dict(self._overrides)
            self._overrides.update(values)
        try:
            yield
        finally:
            with self._lock:
                self._overrides = saved


def _live_here(definition: Any, off: str, service: str) -> bool:
    """Whether a flag definition may serve a variant other than `off` to this service: it is
    on for everyone, or its targeting does not pin `service` to another one."""
    if not isinstance(definition, dict):
        return False
    targeting = definition.get("targeting")
    if not targeting:
        return bool(definition.get("defaultVariant", off) != off)
    condition = targeting.get("if", [None])[0] if isinstance(targeting, dict) else None
    tests = condition.get("and", [condition]) if isinstance(condition, dict) else []
    for test in tests:
        operands = test.get("==") if isinstance(test, dict) else None
        if isinstance(operands, list) and len(operands) == 2:
            attribute, value = operands
            if attribute == {"var": "service"} and value != service:
                return False
    return True
