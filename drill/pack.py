"""The participant kit: the lab tree participants get, without what names a defect or its fix.

`drill pack participants OUT` builds it from what git tracks in the lab tree: a git repository
with one commit, or the same repository in a .tar.gz. It leaves out the paths in EXCLUDED,
carries the files in REWRITTEN in a participant form, adds a briefing card per scenario, and
refuses to write a kit in which a file still names a cause (SPOILER_TERMS, see `spoilers`) or
holds a line a reference fix adds (see `solution_lines`). This module is not in the kit: its
spoiler list would name every cause.
"""

from __future__ import annotations

import ast
import fnmatch
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import textwrap
import tokenize
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from drill.native import SERVICES
from drill.scenarios import Program, ScenarioFileError, SlaCheck, load_program
from faults import CatalogError, load_catalog

FORMATS = ("git", "tar")
TAR_SUFFIX = ".tar.gz"
PARTICIPANT_DOCS = "docs/participants"
KIT_README = f"{PARTICIPANT_DOCS}/kit-readme.md"
CARD = PARTICIPANT_DOCS + "/scenario-{name}.md"

# Tracked paths the kit leaves out. A key ending in "/" is a directory; any other key is an
# fnmatch pattern on the path. A test checks that each one still matches a tracked file.
EXCLUDED: dict[str, str] = {
    "solutions/": "the reference fixes (patches and any notes beside them)",
    "docs/instructor-guide.md": "names every defect, its fix, the shortcuts and measured figures",
    "tests/shortcuts/": "shortcut patches on top of the reference fixes; each names what it skips",
    "tests/test_drill_*.py": "apply the reference fixes and shortcuts: each drill's verdicts",
    "tests/drill_labs.py": "the drill tests' labs, started from trees with a fix or shortcut",
    "tests/test_feed_cache.py": "tests the n-plus-one reference fix's profile cache",
    "tests/feed_cache_check.py": "test_feed_cache's helper; imports a module only the fix adds",
    "tests/test_dashboards.py": "applies both reference fixes for its live check; its forbidden "
    "words and fix-only metrics name the causes and the fixes",
    "tests/test_ledger.py": "asserts the shipped ledger's defects (float drift, a retried "
    "payment posted twice) and names them: a correct fix fails it",
    "tests/test_feed.py": "asserts the shipped feed's statements and profile calls per timeline "
    "(one per followee, one per post): a correct fix fails it",
    "tests/test_chain.py": "asserts the shipped call path (the customer check inside the "
    "order's request) and calls it a cycle: a fix that moves the check fails it",
    "tests/test_scenarios.py": "checks the flag table of docs/instructor-guide.md, which is left "
    "out",
    "tests/test_compose.py": "requires solutions/ in the image's build context",
    "tests/test_pack.py": "tests this module: reads the solutions and lists the spoiler terms",
    "drill/pack.py": "this module: its spoiler list names every cause (the CLI says so in a kit)",
    "benchmarks/": "the instructor's measurements: most apply the reference fixes, and their "
    "docstrings and output report before/after figures per defect",
    "grafana/README.md": "the dashboards' maintainer notes: name the metrics only the reference "
    "fixes export; docs/participants/dashboards.md replaces it",
    "guardrails/": "phase 4's review rules: each names a defect class (floats, timeouts, blocking "
    "calls, a query per row, the call cycle); handed out with the post-mortem",
    "drill/guardrails.py": "runs those rules and explains each finding by its defect class",
    ".pre-commit-config.yaml": "runs drill guardrails on each commit (phase 4)",
    "tests/test_guardrails.py": "asserts each shipped defect's line, by defect class",
    "tests/guardrails_cases/": "annotated examples of each defect class",
    "tests/test_participant_ci.py": "runs the participants' CI on a tree with a reference fix",
    "tests/test_workshop_rehearsal.py": "rehearses the day with one team's lab fixed",
    "drill/report/": "the wrap-up's debrief report: its plots and KPIs are titled by the causes",
    "tests/test_report.py": "tests the debrief report, whose sections name the causes",
    "docs/templates/spec.md": "phase 4's spec template: its guardrails section names every fix",
    ".ci/run": "the lab's own CI: its second step runs the drill verdict tests, which are left "
    "out (pytest fails when it collects nothing); participants' CI runs drill verify",
}

# What phase 4 hands out (`drill pack phase4`): the review rules, their runner and hook, and
# the spec template. Each is also in EXCLUDED: before the post-mortem they name the causes.
PHASE4: tuple[str, ...] = (
    "guardrails/",
    "drill/guardrails.py",
    ".pre-commit-config.yaml",
    "docs/templates/spec.md",
)

# Files the kit carries in another form.
REWRITTEN: dict[str, str] = {
    "README.md": "the participants' README (docs/participants/kit-readme.md): the lab's README "
    "serves instructors and maintainers (reference fixes, shortcut tests, benchmarks)",
    KIT_README: "becomes the kit's README.md",
    "faults/flags.json": "each flag's description is its participant_description; the "
    "instructor's text says what a condition exposes",
    "scenarios.yaml": "comments dropped (they explain checks by the defects); hints replaced by "
    "placeholders (the instructor releases them, and the agenda still counts three); each "
    "latency basis rewritten (they describe the fixes' paths). Checks and bounds stay, so the "
    "kit's drill verify gives the same verdicts",
    "grafana/dashboards/*.json": "panels on metrics only a fix exports are left out: an empty "
    "panel named after a fix is a hint",
}

# Metrics only the reference fixes export (tests/test_dashboards.py: FIX_ONLY_METRICS).
FIX_ONLY_METRICS = ("chain_breaker_state", "cache_lookups_total")

# The lab's runtime code: the kit ships it unchanged, so a line it already has is not a fix's.
RUNTIME = ("services/", "faults/", "drill/", "loadtests/")


@dataclass(frozen=True)
class Spoiler:
    """A word or phrase that names a cause or a fix, as a regular expression."""

    pattern: str
    why: str
    case_sensitive: bool = False

    def regex(self) -> re.Pattern[str]:
        # A term counts as a word of its own: glued to a letter, digit or underscore it is part
        # of a code identifier (max_batch, BatchTooLarge, chain_breaker_state), not prose.
        flags = 0 if self.case_sensitive else re.IGNORECASE
        return re.compile(rf"(?<!\w)(?:{self.pattern})(?!\w)", flags)


# What names a cause or a fix, chosen from solutions/*.patch and the instructor guide.
SPOILER_TERMS: tuple[Spoiler, ...] = (
    Spoiler(r"floats?|floating[- ]point", "fp-drift: money held as binary floats"),
    Spoiler(
        r"Decimal",
        "fp-drift: the fix's money type (lowercase 'decimal' is the API's own word, as in 'a "
        "plain decimal string', and stays)",
        case_sensitive=True,
    ),
    Spoiler(
        r"idempoten(?:t|ce|cy)(?![ -]keys?\b)",
        "fp-drift: a retried payment must post once ('idempotency key' names the API's "
        "Idempotency-Key field, which the services and dashboards show, and stays)",
    ),
    Spoiler(r"dead-?locks?|dead-?lock(?:ed|ing)", "circular-deadlock: the cause itself"),
    Spoiler(
        r"cycles?|cyclic|circular(?:ly)?", "circular-deadlock: the call cycle A to B to C to A"
    ),
    Spoiler(r"(?:circuit[- ])?breakers?", "circular-deadlock: the fix's circuit breaker"),
    Spoiler(r"(?:no|without an?|infinite) timeouts?", "circular-deadlock: calls that wait forever"),
    Spoiler(r"n ?\+ ?1|n plus one", "n-plus-one: a query per followed account and per post"),
    Spoiler(
        r"batched|batching",
        "n-plus-one: the fix's batched queries and calls (the noun 'batch' names the profiles "
        "API's documented endpoint and stays)",
    ),
    Spoiler(r"blocking calls?", "n-plus-one: blocking calls on the event loop"),
    Spoiler(r"single[- ]flight|semaphores?", "n-plus-one: the fix's cache and concurrency bound"),
)

# Names that contain a term but are identifiers the lab's interface needs, blanked before the
# terms are matched: the scenario names (the CLI's arguments, read from scenarios.yaml) and these.
ALLOWED_IDENTIFIERS = ("Idempotency-Key",)

# Statements any Python file has: a solution line that is one of them is not the fix's text.
_GENERIC_LINE = re.compile(
    r"(?:return|yield|raise|pass|continue|break)(?: \w+)?"
    r"|(?:else|try|finally|while True):"
    r"|\w+ = (?:\{\}|\[\]|\(\)|None|True|False|0|set\(\))"
    r"|@\w+|self,|def __init__\(|\) -> \w+:"
)
_IMPORT = re.compile(r"(?:from\s+\S+\s+)?import\s")


class PackError(Exception):
    """The kit cannot be built as asked; the message says what to change."""


@dataclass(frozen=True)
class KitFile:
    data: bytes
    executable: bool = False


@dataclass(frozen=True)
class Kit:
    """What `build` wrote."""

    path: Path
    format: str
    files: int
    commit: str


@dataclass(frozen=True)
class Finding:
    """A spoiler term or a solution's line found in a kit file."""

    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def excluded(path: str) -> str | None:
    """Why the kit leaves this tracked path out, or None if it keeps it."""
    for pattern, why in EXCLUDED.items():
        if (
            path.startswith(pattern)
            if pattern.endswith("/")
            else fnmatch.fnmatchcase(path, pattern)
        ):
            return why
    return None


# -- the source tree -----------------------------------------------------------------------------


def _git(root: Path, *args: str, env: Mapping[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
    except FileNotFoundError:
        raise PackError("git is not installed: the kit is built from what git tracks") from None
    if done.returncode != 0:
        raise PackError(f"git {' '.join(args)} failed in {root}: {done.stderr.strip()}")
    return done.stdout


def tracked_files(root: Path, *, allow_dirty: bool = False) -> dict[str, bool]:
    """Every file git tracks under root, with whether it is executable; checks the checkout."""
    if not (root / "scenarios.yaml").is_file():
        raise PackError(f"{root} is not a lab tree (no scenarios.yaml); pass --root")
    probe = subprocess.run(
        ["git", "rev-parse", "--is-inside-work-tree"], cwd=root, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if probe.returncode != 0 or probe.stdout.strip() != "true":
        raise PackError(
            f"{root} is not a git checkout: the kit is built from the files git tracks there"
        )
    status = _git(root, "status", "--porcelain", "-z", "--untracked-files=no", "--", ".")
    changed = [entry for entry in status.split("\0") if entry]
    if changed and not allow_dirty:
        names = ", ".join(entry[3:] for entry in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise PackError(
            f"{root} has uncommitted changes to tracked files ({names}{more}): commit them, "
            "or pass --allow-dirty to pack the working tree as it is"
        )
    files: dict[str, bool] = {}
    for entry in _git(root, "ls-files", "-s", "-z").split("\0"):
        if entry:
            mode, _, _ = entry.split("\t", 1)[0].split(" ")
            files[entry.split("\t", 1)[1]] = mode == "100755"
    if "scenarios.yaml" not in files:
        raise PackError(f"git tracks no scenarios.yaml in {root}: pack a checkout of the lab")
    return files


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError):
        return None


def solution_lines(root: Path) -> set[str]:
    """The lines the reference fixes add that carry the fix's text, stripped.

    An added line of solutions/*.patch counts unless it is trivial: fewer than three letters or
    digits (`)`, `],`), an import that a file the kit keeps already makes, a line the kit's
    runtime code (RUNTIME) already has (moved or re-indented code, `session.commit()`), or a
    statement any Python file has (_GENERIC_LINE: `try:`, `return None`, `self,`).
    """
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, check=False
    ).stdout.split("\0")
    common: set[str] = set()
    for path in (p for p in tracked if p and excluded(p) is None):
        text = _read_text(root / path) or ""
        for line in (raw.strip() for raw in text.splitlines()):
            if path.startswith(RUNTIME) or _IMPORT.match(line):
                common.add(line)
    lines: set[str] = set()
    for patch in sorted((root / "solutions").glob("*.patch")):
        for raw in patch.read_text().splitlines():
            if not raw.startswith("+") or raw.startswith("+++"):
                continue
            line = raw[1:].strip()
            significant = sum(ch.isalnum() for ch in line) >= 3
            if significant and line not in common and not _GENERIC_LINE.fullmatch(line):
                lines.add(line)
    return lines


# -- spoilers ------------------------------------------------------------------------------------


def _python_prose(text: str) -> Iterator[tuple[int, str]]:
    """Comments and docstrings: the prose of a Python file (code and string data are not)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
        tree = ast.parse(text)
    except (SyntaxError, tokenize.TokenError):
        yield from enumerate(text.splitlines(), start=1)
        return
    for token in tokens:
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                for offset, line in enumerate(first.value.value.splitlines()):
                    yield first.lineno + offset, line


def _json_prose(text: str) -> Iterator[tuple[int, str]]:
    """Every string value (keys are schema, not prose), with the line it is on."""

    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)

    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        yield from enumerate(text.splitlines(), start=1)
        return
    for value in dict.fromkeys(strings(document)):
        # The line of its first appearance, written either way JSON may have written it.
        at = max(
            text.find(json.dumps(value)[1:-1]),
            text.find(json.dumps(value, ensure_ascii=False)[1:-1]),
        )
        yield text.count("\n", 0, max(at, 0)) + 1, value


def prose(path: str, text: str) -> Iterator[tuple[int, str]]:
    """(line, text) of what a reader takes as prose in a kit file."""
    if path.endswith(".py"):
        yield from _python_prose(text)
    elif path.endswith(".json"):
        yield from _json_prose(text)
    else:
        yield from enumerate(text.splitlines(), start=1)


def spoilers(path: str, text: str, identifiers: Iterable[str]) -> list[Finding]:
    """Spoiler terms in a file's prose.

    The rule: a term counts where it stands as a word of its own in prose (Markdown, YAML,
    text and config files whole; JSON string values; Python comments and docstrings). Code and
    JSON keys are not prose, nor is a term glued into an identifier (`max_batch`). The scenario
    names and ALLOWED_IDENTIFIERS are blanked first, so `drill verify circular-deadlock` passes
    while "a circular deadlock" in a sentence does not.
    """
    allowed = [
        re.compile(rf"(?<!\w){re.escape(name)}(?!\w)")
        for name in sorted({*identifiers, *ALLOWED_IDENTIFIERS}, key=len, reverse=True)
    ]
    terms = [(term, term.regex()) for term in SPOILER_TERMS]
    found: list[Finding] = []
    for number, chunk in prose(path, text):
        for name in allowed:
            chunk = name.sub(" ", chunk)
        for term, regex in terms:
            for match in regex.finditer(chunk):
                found.append(Finding(path, number, f"{match.group(0)!r} ({term.why})"))
    return found


def leaked_lines(path: str, text: str, lines: set[str]) -> list[Finding]:
    """Lines of a kit file that a reference fix adds (see solution_lines)."""
    return [
        Finding(path, number, f"a reference fix's line: {line.strip()[:80]!r}")
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() in lines
    ]


# -- the participant forms of rewritten files ---------------------------------------------------


def participant_catalog(text: str) -> str:
    """flags.json with each description replaced by the flag's participant_description."""
    document = json.loads(text)
    for key, flag in document["flags"].items():
        metadata = flag.get("metadata") or {}
        participant = metadata.pop("participant_description", None)
        if not participant:
            raise PackError(f"faults/flags.json: flags.{key}: no participant_description")
        metadata["description"] = participant
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def participant_basis(check: SlaCheck) -> str:
    """A latency bound's basis in words that describe no fix."""
    what = check.request or "requests"
    return (
        f"A bound with headroom, calibrated on the slowest supported machine: two vCPUs at "
        f"about half a laptop core's speed (DRILL_PIN_CPUS=0 comes close). The healthy "
        f"baseline stays within half of it there. It catches a change that makes {what} slow; "
        f"the invariants carry the verdict on the defect."
    )


def _value(node: yaml.Node, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key:
                return k, v
    return None


def _last_line(node: yaml.Node) -> int:
    """0-based last line a node's text occupies."""
    end = node.end_mark
    return end.line if end.column > 0 else end.line - 1


def _scalars(node: yaml.Node) -> Iterator[yaml.ScalarNode]:
    """Every scalar under a node, keys included."""
    if isinstance(node, yaml.ScalarNode):
        yield node
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            yield from _scalars(k)
            yield from _scalars(v)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _scalars(item)


def participant_scenarios(text: str, program: Program) -> str:
    """scenarios.yaml for participants: same checks and agenda, edited in place (REWRITTEN)."""
    root = yaml.compose(text)
    found = _value(root, "scenarios") if root is not None else None
    if root is None or found is None:
        raise PackError("scenarios.yaml has no scenarios")
    lines = text.splitlines(keepends=True)
    edits: dict[int, tuple[int, list[str]]] = {}  # first line -> (last line, replacement)
    for name_node, node in found[1].value:
        scenario = program.scenario(name_node.value)
        hints = _value(node, "hints")
        for number, item in enumerate(hints[1].value if hints else [], start=1):
            prefix = lines[item.start_mark.line][: item.start_mark.column]
            placeholder = f"Your instructor releases hint {number} during the workshop."
            edits[item.start_mark.line] = (
                _last_line(item),
                [f"{prefix}{json.dumps(placeholder)}\n"],
            )
        sla = _value(node, "sla")
        for check, check_node in zip(scenario.sla, sla[1].value if sla else [], strict=True):
            basis = _value(check_node, "basis")
            if basis is None:
                continue
            key, value = basis
            prefix = lines[key.start_mark.line][: key.start_mark.column]
            indent = " " * (key.start_mark.column + 2)
            wrapped = textwrap.wrap(participant_basis(check), width=96 - len(indent))
            edits[key.start_mark.line] = (
                _last_line(value),
                [f"{prefix}basis: >\n", *(f"{indent}{part}\n" for part in wrapped)],
            )
    # Comments go where they explain the scenarios (by their defects) and at the top; the
    # agenda's and the rotation's stay. Lines inside block scalars are text, never comments.
    begin, end = found[0].start_mark.line, max(_last_line(n) for n in _scalars(found[1]))
    protected = {
        line
        for n in _scalars(root)
        if n.style in (">", "|")
        for line in range(n.start_mark.line + 1, _last_line(n) + 1)
    }
    header = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    out = [
        "# The workshop program, participant copy: each scenario's conditions, load and SLA\n",
        "# checks, and the agenda. `drill verify <scenario>` runs one. Hints come from your\n",
        "# instructor.\n",
    ]
    index = 0
    while index < len(lines):
        if index in edits:
            through, replacement = edits[index]
            out += replacement
            index = through + 1
            continue
        line, number = lines[index], index
        index += 1
        comment = line.lstrip().startswith("#") and number not in protected
        if comment and (number < header or begin <= number <= end):
            continue
        if not line.strip() and (not out or not out[-1].strip()):
            continue
        out.append(line)
    return "".join(out)


def participant_dashboard(text: str) -> str | None:
    """A dashboard without the panels that read FIX_ONLY_METRICS; None when it has none."""
    document = json.loads(text)

    def fix_only(panel: dict[str, Any]) -> bool:
        queries = " ".join(str(t.get("expr", "")) for t in panel.get("targets", []))
        return any(re.search(rf"\b{metric}\b", queries) for metric in FIX_ONLY_METRICS)

    panels = document.get("panels", [])
    kept = [p for p in panels if not fix_only(p)]
    changed = len(kept) < len(panels)
    for row in kept:
        nested = row.get("panels") or []
        if any(fix_only(p) for p in nested):
            row["panels"] = [p for p in nested if not fix_only(p)]
            changed = True
    if not changed:
        return None
    # A row left with no panel before the next row (or the end) goes too.
    document["panels"] = [
        p for i, p in enumerate(kept)
        if p.get("type") != "row" or p.get("panels")
        or (i + 1 < len(kept) and kept[i + 1].get("type") != "row")
    ]  # fmt: skip
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _fill(text: str, bullet: bool = False) -> str:
    """Markdown prose wrapped at 96 columns (a bullet's lines indented under its text)."""
    words = " ".join(text.split())
    if bullet:
        return textwrap.fill(words, width=96, initial_indent="- ", subsequent_indent="  ")
    return textwrap.fill(words, width=96)


def _bound(check: SlaCheck) -> str:
    unit = " ms" if check.kind == "latency" else ""
    parts = [
        f">= {check.min:g}{unit}" if check.min is not None else "",
        f"<= {check.max:g}{unit}" if check.max is not None else "",
    ]
    return " and ".join(part for part in parts if part)


def briefing_card(name: str, program: Program, descriptions: Mapping[str, str]) -> str:
    """docs/participants/scenario-<name>.md: what was reported, where, and how a fix is judged."""
    scenario = program.scenario(name)
    load = scenario.load
    services = [
        f"- {service}: http://127.0.0.1:{SERVICES[service].port}" if service in SERVICES
        else f"- {service}"
        for service in scenario.services
    ]  # fmt: skip
    conditions = [
        _fill(
            f"`{t.flag}` {t.variant}"
            + (f" for {t.percent:g}% of requests" if t.percent else "")
            + f": {descriptions.get(t.flag, '')}",
            bullet=True,
        )
        for t in scenario.triggers
    ]
    rows = [
        f"| {check.name} | {check.kind}{'' if check.baseline else ' (not in --baseline)'} | "
        f"`{check.figure}`{f' of `{check.request}`' if check.request else ''} {_bound(check)} |"
        for check in scenario.sla
    ]
    return "\n".join(
        [
            f"# {scenario.title}",
            "",
            f"Scenario `{name}`. Services: {', '.join(scenario.services)}.",
            "",
            "## What was reported",
            "",
            _fill(scenario.summary),
            "",
            "## Where",
            "",
            *services,
            "",
            _fill(
                "Add `DRILL_PORT_OFFSET` to each port if you set one. "
                "`docs/participants/handout.md` has the dashboards, traces and logs, and "
                "`docs/participants/dashboards.md` how to read the dashboards."
            ),
            "",
            "## How a fix is judged",
            "",
            "```",
            f"drill verify {name}              # the conditions below on: a fix must pass",
            f"drill verify {name} --baseline   # every condition off: the healthy baseline",
            "```",
            "",
            _fill(
                f"Verify turns these conditions on, then runs {load.users} Locust users "
                f"(`{load.user}` in `{load.locustfile}`) against {load.host} for "
                f"{load.duration:g} s:"
            ),
            "",
            *conditions,
            "",
            "Then it checks (exit 0 when all pass, 1 when one is missed, 2 when it could not run):",
            "",
            "| check | kind | figure and bound |",
            "|---|---|---|",
            *rows,
            "",
            _fill(
                "Invariants decide whether the defect is gone, on any machine; latency bounds "
                "hold on the slowest supported one. Verify also counts how often each condition "
                "acted: switching one off is not a fix."
            ),
            "",
        ]
    )


# -- the kit -------------------------------------------------------------------------------------


def kit_files(root: Path, *, allow_dirty: bool = False) -> dict[str, KitFile]:
    """The kit's files by path: the tracked tree less EXCLUDED, REWRITTEN, plus the cards."""
    files: dict[str, KitFile] = {}
    for path, executable in sorted(tracked_files(root, allow_dirty=allow_dirty).items()):
        source = root / path
        if excluded(path) is None and source.is_file():
            files[path] = KitFile(source.read_bytes(), executable)
    try:
        program = load_program(root / "scenarios.yaml")
    except ScenarioFileError as exc:
        raise PackError(f"scenarios.yaml is not valid, so no kit: {exc}") from None

    readme = files.pop(KIT_README, None)
    if readme is None:
        raise PackError(f"{KIT_README} is missing: it becomes the kit's README.md")
    files["README.md"] = KitFile(readme.data)
    catalog = participant_catalog(files["faults/flags.json"].data.decode())
    files["faults/flags.json"] = KitFile(catalog.encode())
    scenarios = participant_scenarios(files["scenarios.yaml"].data.decode(), program)
    files["scenarios.yaml"] = KitFile(scenarios.encode())
    for path in [p for p in files if fnmatch.fnmatchcase(p, "grafana/dashboards/*.json")]:
        dashboard = participant_dashboard(files[path].data.decode())
        if dashboard is not None:
            files[path] = KitFile(dashboard.encode())
    descriptions = {
        key: str(flag["metadata"]["description"])
        for key, flag in json.loads(catalog)["flags"].items()
    }
    for name in program.scenarios:
        card = briefing_card(name, program, descriptions)
        files[CARD.format(name=name)] = KitFile(card.encode())
    return files


def check_kit(root: Path, files: Mapping[str, KitFile]) -> list[Finding]:
    """Every spoiler term and reference-fix line in the kit's text files."""
    names = load_program(root / "scenarios.yaml").scenarios.keys()
    lines = solution_lines(root)
    findings: list[Finding] = []
    for path, file in sorted(files.items()):
        try:
            text = file.data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        findings += spoilers(path, text, names)
        findings += leaked_lines(path, text, lines)
    return findings


def resolve_format(out: Path, fmt: str | None) -> str:
    """git or tar: as asked, else tar for a name ending in .tar.gz."""
    is_tar = out.name.endswith(TAR_SUFFIX)
    if fmt is None:
        return "tar" if is_tar else "git"
    if fmt not in FORMATS:
        raise PackError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "tar" and not is_tar:
        raise PackError(
            f"--format tar writes a {TAR_SUFFIX} archive: name OUT like kit{TAR_SUFFIX}"
        )
    if fmt == "git" and is_tar:
        raise PackError(f"--format git writes a directory; {out.name} looks like an archive")
    return fmt


def _check_out(out: Path, fmt: str) -> None:
    if fmt == "git":
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise PackError(f"{out} exists and is not an empty directory: choose another OUT")
    elif out.exists() and (out.is_dir() or out.stat().st_size > 0):
        raise PackError(f"{out} exists: remove it or choose another OUT")


def _write_tree(directory: Path, files: Mapping[str, KitFile]) -> None:
    for path, file in files.items():
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.data)
        target.chmod(0o755 if file.executable else 0o644)


def _commit(directory: Path, root: Path) -> str:
    source = _git(root, "rev-parse", "--short", "HEAD").strip()
    when = _git(root, "log", "-1", "--format=%cI").strip()
    who = {"name": "3 A.M. Drill", "email": "drill@example.invalid"}
    env = {
        "GIT_AUTHOR_NAME": who["name"], "GIT_AUTHOR_EMAIL": who["email"],
        "GIT_COMMITTER_NAME": who["name"], "GIT_COMMITTER_EMAIL": who["email"],
        "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when,
    }  # fmt: skip
    _git(directory, "init", "-q", "-b", "main")
    _git(directory, "add", "--all", "--force", ".")
    message = (
        f"3 A.M. Drill lab: participant kit\n\nBuilt by `drill pack participants` from {source}."
    )
    _git(directory, "-c", "commit.gpgsign=false", "commit", "-q", "--no-verify", "-m", message,
         env=env)  # fmt: skip
    return _git(directory, "rev-parse", "HEAD").strip()


def _tar(directory: Path, archive: Path, top: str) -> None:
    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(archive, "w:gz") as tar:
        tar.add(directory, arcname=top, filter=clean)


def build(root: Path, out: Path, *, fmt: str | None = None, allow_dirty: bool = False) -> Kit:
    """Check the input, assemble and check the kit, then write it; nothing is written on error."""
    root, out = root.resolve(), out.absolute()
    chosen = resolve_format(out, fmt)
    _check_out(out, chosen)
    files = kit_files(root, allow_dirty=allow_dirty)
    findings = check_kit(root, files)
    if findings:
        listed = "\n".join(f"  {finding}" for finding in findings[:20])
        more = f"\n  ... and {len(findings) - 20} more" if len(findings) > 20 else ""
        raise PackError(f"the kit would give causes away; change these first:\n{listed}{more}")

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".drill-kit-", dir=out.parent))
    try:
        tree = work / "kit"
        _write_tree(tree, files)
        try:
            load_program(tree / "scenarios.yaml", load_catalog(tree / "faults" / "flags.json"))
        except (ScenarioFileError, CatalogError) as exc:
            raise PackError(
                f"the kit's scenarios.yaml or flag catalog does not load: {exc}"
            ) from None
        commit = _commit(tree, root)
        if chosen == "git":
            if out.exists():
                out.rmdir()
            tree.rename(out)
        else:
            archive = work / out.name
            _tar(tree, archive, out.name.removesuffix(TAR_SUFFIX))
            archive.replace(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Kit(out, chosen, len(files), commit)


# -- phase 4 -------------------------------------------------------------------------------------


def phase4_files(root: Path, *, allow_dirty: bool = False) -> dict[str, KitFile]:
    """The tracked files that PHASE4 names, by path."""
    files: dict[str, KitFile] = {}
    for path, executable in sorted(tracked_files(root, allow_dirty=allow_dirty).items()):
        wanted = any(
            path.startswith(entry) if entry.endswith("/") else path == entry for entry in PHASE4
        )
        if wanted and (root / path).is_file():
            files[path] = KitFile((root / path).read_bytes(), executable)
    missing = [
        entry for entry in PHASE4
        if not any(p == entry or (entry.endswith("/") and p.startswith(entry)) for p in files)
    ]  # fmt: skip
    if missing:
        raise PackError(
            f"git tracks nothing at {', '.join(missing)} in {root}: nothing to hand out"
        )
    return files


def build_phase4(root: Path, out: Path, *, allow_dirty: bool = False) -> Kit:
    """Write phase 4's handout as OUT.tar.gz: paths relative to the repository's top, so that
    `tar -xzf OUT.tar.gz -C <the team's repository>` adds them. Nothing is written on error."""
    root, out = root.resolve(), out.absolute()
    if not out.name.endswith(TAR_SUFFIX):
        raise PackError(
            f"the phase 4 handout is a {TAR_SUFFIX} archive: name OUT like phase4{TAR_SUFFIX}"
        )
    _check_out(out, "tar")
    files = phase4_files(root, allow_dirty=allow_dirty)
    commit = _git(root, "rev-parse", "HEAD").strip()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".drill-phase4-", dir=out.parent))
    try:
        _write_tree(work / "tree", files)
        archive = work / out.name
        with tarfile.open(archive, "w:gz") as tar:
            for path in files:
                info = tar.gettarinfo(work / "tree" / path, arcname=path)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with (work / "tree" / path).open("rb") as data:
                    tar.addfile(info, data)
        archive.replace(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Kit(out, "tar", len(files), commit)
