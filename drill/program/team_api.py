"""The teams' endpoints on the runner's API: claims, the hint ladder, verify results, the board.

Writes need a token (`Authorization: Bearer ...`): a team's for its own claims, hints and runs,
the instructor's for judging. Reads of the scoreboard need none; with the instructor's token
they show every scenario even before reveal mode. Errors are RFC 9457 problem details
(`application/problem+json`, the services' own, services.kit.errors); a refused request stores
nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from drill.program.room import revealed
from drill.program.scoreboard import TeamCollector, render_html, room_board
from drill.program.scoreboard import board as full_board
from drill.program.teams import (
    MAX_CLAIM_TEXT,
    MAX_NOTE,
    MAX_PROMQL,
    MAX_TRACE_IDS,
    Caller,
    Refused,
    Workshop,
    trace_ids_in_logs,
)
from services.kit.admin import bearer_token
from services.kit.errors import invalid_request, problem
from services.kit.limits import BodyLimitMiddleware

MAX_BODY_BYTES = 256 * 1024

TraceId = Annotated[
    str, StringConstraints(pattern=r"^[0-9a-fA-F]{32}$", to_lower=True, strip_whitespace=True)
]
ScenarioName = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClaimIn(Strict):
    scenario: ScenarioName
    text: str = Field(min_length=1, max_length=MAX_CLAIM_TEXT)
    trace_ids: list[TraceId] = Field(default=[], max_length=MAX_TRACE_IDS)
    promql: str | None = Field(None, max_length=MAX_PROMQL)
    # What the team's own lab logs said of each trace id (`drill claim` looks before it sends).
    found_locally: dict[TraceId, list[Annotated[str, StringConstraints(max_length=64)]]] = Field(
        default={}, max_length=MAX_TRACE_IDS
    )


class VerdictIn(Strict):
    verdict: Literal["accept", "reject"]
    note: str = Field("", max_length=MAX_NOTE)


class CheckIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(max_length=200)
    figure: str = Field(max_length=200)
    kind: str = Field("invariant", max_length=20)
    value: float | None = None
    passed: bool


class VerifyIn(BaseModel):
    """A `drill verify --json` result (drill.verify.VerifyResult); unknown fields are kept."""

    model_config = ConfigDict(extra="allow")
    scenario: ScenarioName
    passed: bool
    baseline: bool = False
    started_at: str | None = Field(None, max_length=64)
    checks: list[CheckIn] = Field(min_length=1, max_length=100)
    figures: dict[str, float | None] = Field(default={}, max_length=500)


def install(app: FastAPI, workshop: Workshop, notes_dir: Path, log_dir: Path) -> None:
    """Add the teams' routes, the body limit and the problem-details errors to the runner app."""
    app.state.workshop = workshop
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    app.state.metrics.registry.register(
        TeamCollector(workshop, lambda: _shows_all(app.state.board.read()))
    )

    @app.exception_handler(Refused)
    async def refused(_request: Request, exc: Refused) -> JSONResponse:
        return problem(exc.status, exc.detail, title=exc.title)

    app.add_exception_handler(RequestValidationError, invalid_request)

    app.include_router(_router(notes_dir, log_dir))


def _workshop(request: Request) -> Workshop:
    workshop: Workshop = request.app.state.workshop
    return workshop


WorkshopDep = Annotated[Workshop, Depends(_workshop)]


def _caller(request: Request, workshop: WorkshopDep) -> Caller:
    token = bearer_token(request)
    if token is None:
        raise Refused(401, "Token required", "send Authorization: Bearer <your team's token>")
    caller = workshop.caller(token)
    if caller is None:
        raise Refused(401, "Unknown token", "this token belongs to no team and not the instructor")
    return caller


CallerDep = Annotated[Caller, Depends(_caller)]


def _team(caller: CallerDep) -> str:
    if caller.team is None:
        raise Refused(403, "Team token required", "claims, hints and runs belong to a team")
    return caller.team


def _instructor(caller: CallerDep) -> Caller:
    if caller.role != "instructor":
        raise Refused(403, "Instructor token required", "only the instructor judges claims")
    return caller


TeamDep = Annotated[str, Depends(_team)]
InstructorDep = Annotated[Caller, Depends(_instructor)]


def _snapshot(request: Request) -> dict[str, Any]:
    snapshot: dict[str, Any] = request.app.state.board.read()
    return snapshot


def _released(snapshot: dict[str, Any], scenario: str) -> list[int]:
    return [int(h["hint"]) for h in snapshot.get("hints", ()) if h.get("scenario") == scenario]


def _program_line(snapshot: dict[str, Any]) -> str:
    if not snapshot.get("entry"):
        return "the program is not running" if not snapshot.get("at") else "the program is over"
    return f"{snapshot['at']}: {snapshot['entry']}"


def _shows_all(snapshot: dict[str, Any]) -> bool:
    # Reveal mode, or a program that is over: nothing is left to find.
    return revealed(snapshot) or snapshot.get("type") == "finished"


def _router(notes_dir: Path, log_dir: Path) -> APIRouter:
    router = APIRouter()

    @router.get("/scoreboard")
    def scoreboard(request: Request, workshop: WorkshopDep) -> dict[str, Any]:
        """Per team: points, root causes, hints, fixes; per scenario once reveal mode is on
        (or with the instructor's token)."""
        snapshot = _snapshot(request)
        token = bearer_token(request)
        caller = workshop.caller(token) if token else None
        shows_all = _shows_all(snapshot) or (caller is not None and caller.role == "instructor")
        return room_board(full_board(workshop), shows_all)

    @router.get("/scoreboard.html", response_class=HTMLResponse)
    def scoreboard_page(request: Request, workshop: WorkshopDep) -> HTMLResponse:
        """The scoreboard for the projector; it reloads itself."""
        snapshot = _snapshot(request)
        shown = room_board(full_board(workshop), _shows_all(snapshot))
        return HTMLResponse(render_html(shown, _program_line(snapshot)))

    @router.post("/claims", status_code=201)
    def file_claim(
        body: ClaimIn, request: Request, team: TeamDep, workshop: WorkshopDep
    ) -> dict[str, Any]:
        """A root-cause claim on a live scenario; its trace ids are looked up in the lab's logs."""
        snapshot = _snapshot(request)
        trace_ids = list(dict.fromkeys(body.trace_ids))
        found_here = trace_ids_in_logs(log_dir, trace_ids)
        evidence = {
            trace_id: {
                "runner_lab": found_here[trace_id],
                "team_lab": body.found_locally.get(trace_id, []),
                "found": bool(found_here[trace_id] or body.found_locally.get(trace_id)),
            }
            for trace_id in trace_ids
        }
        claim = workshop.file_claim(
            team, body.scenario, body.text, trace_ids, body.promql,
            live=snapshot.get("live", ()), evidence=evidence, program_at=snapshot.get("elapsed"),
        )  # fmt: skip
        return claim.as_json()

    @router.get("/claims")
    def claims(caller: CallerDep, workshop: WorkshopDep) -> dict[str, Any]:
        """A team's own claims; every claim for the instructor."""
        return {"claims": [c.as_json() for c in workshop.claims(caller.team)]}

    @router.post("/claims/{claim_id}/verdict")
    def judge(
        claim_id: int, body: VerdictIn, caller: InstructorDep, workshop: WorkshopDep
    ) -> dict[str, Any]:
        return workshop.judge(claim_id, body.verdict, body.note, by=caller.name).as_json()

    @router.post("/hints/{scenario}", status_code=201)
    def unlock_hint(
        scenario: str, request: Request, team: TeamDep, workshop: WorkshopDep
    ) -> dict[str, Any]:
        """The team's next hint on a scenario (hint N after N-1), at its cost in points."""
        return workshop.unlock_hint(team, scenario, _released(_snapshot(request), scenario))

    @router.get("/hints/{scenario}")
    def open_hints(
        scenario: str, request: Request, team: TeamDep, workshop: WorkshopDep
    ) -> dict[str, Any]:
        return workshop.open_hints(team, scenario, _released(_snapshot(request), scenario))

    @router.get("/notes/{scenario}")
    def notes(scenario: str, caller: CallerDep, workshop: WorkshopDep) -> Response:
        """The scenario's solution notes, once the team's root-cause claim is accepted."""
        if scenario not in workshop.program.scenarios:
            raise Refused(404, "Unknown scenario", f"no scenario {scenario!r}")
        if caller.team is not None and not workshop.has_root_cause(caller.team, scenario):
            raise Refused(
                403, "Root cause first", f"the notes on {scenario} open once your claim is accepted"
            )
        path = notes_dir / f"{scenario}.md"
        if not path.is_file():
            raise Refused(404, "No notes", f"this lab has no solution notes for {scenario}")
        return Response(path.read_text(), media_type="text/markdown; charset=utf-8")

    @router.post("/verify-runs", status_code=201)
    def submit_verify(body: VerifyIn, team: TeamDep, workshop: WorkshopDep) -> dict[str, Any]:
        """A team's `drill verify --json` result; every run is kept, the board shows the best."""
        run_id = workshop.submit_verify(team, body.model_dump(mode="json"))
        return {"id": run_id, "team": team, "scenario": body.scenario, "passed": body.passed}

    @router.get("/teams")
    def teams(_caller: InstructorDep, workshop: WorkshopDep) -> dict[str, Any]:
        return {"teams": workshop.teams()}

    return router
