"""One error body for every service and the runner: RFC 9457 problem details.

Domain errors are plain exceptions (`DomainError` and its subclasses), mapped to HTTP in one
handler. FastAPI's own errors (request validation, unknown routes, `HTTPException`) answer the
same shape, and `document_problems` makes the OpenAPI say so, so clients and schemathesis see
the truth: `application/problem+json` with `type`, `title`, `status`, `detail`, and `errors`
naming each field problem.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.types import Send

PROBLEM = "application/problem+json"


class FieldProblem(BaseModel):
    """What is wrong with one field of the request."""

    pointer: str = Field(description="JSON pointer to the field in its part of the request")
    detail: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field("about:blank", description="A URI that names the kind of problem")
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] | None = Field(None, description="One entry per invalid field")


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_body(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type: str = "about:blank",  # noqa: A002 - the RFC's name
    **extra: Any,
) -> dict[str, Any]:
    body = {"type": type, "title": title or phrase(status), "status": status, "detail": detail}
    return body | extra


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type: str = "about:blank",  # noqa: A002 - the RFC's name
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem-details response."""
    body = problem_body(status, detail, title=title, type=type, **extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


async def send_problem(
    send: Send, status: int, detail: str, *, title: str | None = None, retry_after: int = 0
) -> None:
    """A problem-details response from pure ASGI middleware, before any route ran."""
    headers = [(b"content-type", PROBLEM.encode())]
    if retry_after:
        headers.append((b"retry-after", str(retry_after).encode()))
    body = json.dumps(problem_body(status, detail, title=title)).encode()
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class DomainError(Exception):
    """A request the service understood but will not carry out."""

    status_code = 400
    code = "bad_request"
    headers: Mapping[str, str] | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError):
    status_code = 404
    code = "not_found"


class Conflict(DomainError):
    status_code = 409
    code = "conflict"


class Unauthorized(DomainError):
    status_code = 401
    code = "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


def field_problems(exc: RequestValidationError) -> list[dict[str, str]]:
    """Each validation error as a JSON pointer into its part of the request, and what is wrong."""
    return [
        {"pointer": "/" + "/".join(str(p) for p in e["loc"][1:]), "detail": e["msg"]}
        for e in exc.errors()
    ]


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    title = exc.code.replace("_", " ").capitalize()
    kind = f"urn:drill:problem:{exc.code}"
    return problem(exc.status_code, exc.detail, title=title, type=kind, headers=exc.headers)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return problem(exc.status_code, str(exc.detail), headers=exc.headers)


async def invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    """422 naming every invalid field, for FastAPI's request validation."""
    assert isinstance(exc, RequestValidationError)
    errors = field_problems(exc)
    detail = "; ".join(f"{e['pointer']}: {e['detail']}" for e in errors)
    return problem(422, detail, title="Invalid request", errors=errors)


async def _server_error(_request: Request, _exc: Exception) -> JSONResponse:
    # Starlette re-raises after this answer, so the error still shows in the trace and the log.
    return problem(500, "the server failed to handle this request; see its log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Exception, _server_error)
    document_problems(app)


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's `responses`: the problem statuses it may answer besides 422 (added for every
    route with parameters). The content is filled in by `document_problems`."""
    return {status: {"description": phrase(status)} for status in statuses}


def document_problems(app: FastAPI) -> None:
    """Make the app's OpenAPI declare problem details for every error status it lists, and
    400 and 413 for every request body (parsing and the body limit come before validation)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _rewrite(generate())
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _rewrite(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(problem_schema.pop("$defs", {}))
    components["Problem"] = problem_schema
    for item in schema.get("paths", {}).values():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation:
                # Before validation: a body that is not UTF-8 JSON text, or is over the limit.
                responses.setdefault("400", {"description": "The body could not be parsed"})
                responses.setdefault("413", {"description": phrase(413)})
            for status, response in responses.items():
                if status[:1] in ("4", "5"):
                    response["content"] = {PROBLEM: {"schema": dict(_PROBLEM_REF)}}
                    if status == "422":
                        response["description"] = "Invalid request"
    text = json.dumps(schema["paths"])
    for name in ("HTTPValidationError", "ValidationError"):
        if f'"#/components/schemas/{name}"' not in text:
            components.pop(name, None)
