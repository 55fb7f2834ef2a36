"""Who may call a service's admin routes: whoever presents the instructor's token.

The runner keeps the instructor's token in `<state dir>/program/instructor.token`, mode 0600,
readable by its owner only. Services run as other users (uid 10001 in compose, with the state
dir mounted), so beside it the runner writes the token's SHA-256 to `instructor.sha256`, mode
0644: a digest lets a service check a token without being able to present one. A service reads
the digest on each admin request, so a new token works at once, and compares digests in
constant time. No digest file means no admin access at all: the lab fails closed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from services.kit.app import SettingsDep
from services.kit.errors import Unauthorized

DIGEST_FILE = Path("program") / "instructor.sha256"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def digest_file(state_dir: Path) -> Path:
    return state_dir / DIGEST_FILE


def write_token_digest(path: Path, token: str) -> None:
    """Publish the digest of the instructor's token to the services (atomically, mode 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wanted = token_digest(token) + "\n"
    if path.is_file() and path.read_text() == wanted:
        return
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".instructor.")
    with os.fdopen(descriptor, "w") as handle:
        handle.write(wanted)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def require_instructor(request: Request, settings: SettingsDep) -> None:
    """401 unless the request carries the instructor's token as a bearer token."""
    token = bearer_token(request)
    if token is None:
        raise Unauthorized(
            "admin routes need the instructor's token: Authorization: Bearer <token> "
            "(`drill program token` prints it)"
        )
    try:
        expected = digest_file(settings.state_dir).read_text().strip()
    except OSError:
        raise Unauthorized(
            "this lab has no instructor token yet; `drill program token` makes one"
        ) from None
    if not hmac.compare_digest(token_digest(token), expected):
        raise Unauthorized("this is not the instructor's token")


InstructorDep = Annotated[None, Depends(require_instructor)]
