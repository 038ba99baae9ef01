"""Generate the blocking SDK from the asyncio one: ``tidebase/_client.py`` and ``tidebase/_context.py``
are written from ``tidebase/_async_client.py`` and ``tidebase/_async_context.py``.

    python scripts/unasync.py            # rewrite the generated files (make sdk-sync)
    python scripts/unasync.py --check    # exit 1, with a diff, when they are stale (make sdk-check, make lint)
    python scripts/unasync.py --out DIR  # write them under DIR instead (the test compares them)

The rewrite works on tokens, so prose and string contents are never mistaken for code:

* ``async`` before ``def``/``with``/``for`` and every ``await`` are dropped; ``(await x.y(z))`` loses
  its then useless parentheses;
* names are renamed by ``CODE_NAMES`` (classes, modules, ``aclose``, ``__aenter__``, httpx's async
  classes, ``_async_primitives`` -> ``_sync_primitives``); docstrings and comments get only the
  names in ``TEXT_NAMES``;
* the lines between ``# unasync: async-only begin`` and ``# unasync: async-only end`` are left out;
* a name still looking async afterwards is an error, so a new async name cannot slip through;
* the result gets a "generated" header and is put through ``ruff check --select I --fix`` and
  ``ruff format`` (the project's own settings), so it is committed exactly as lint wants it.

Only the flavour module differs by hand (``_async_primitives.py`` / ``_sync_primitives.py``).
Standard library only, plus the ruff the project already pins.
"""

from __future__ import annotations

import argparse
import difflib
import io
import keyword
import re
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PAIRS = {
    "tidebase/_async_client.py": "tidebase/_client.py",
    "tidebase/_async_context.py": "tidebase/_context.py",
    "tidebase/_async_budget.py": "tidebase/_sync_budget.py",
}

# Names the sync SDK spells differently, in code.
CODE_NAMES = {
    # our classes
    "AsyncTidebase": "Tidebase",
    "AsyncRuns": "Runs",
    "AsyncQueues": "Queues",
    "AsyncSchedules": "Schedules",
    "AsyncWorkflow": "Workflow",
    "AsyncRunContext": "RunContext",
    "AsyncRunGates": "RunGates",
    "AsyncRunSession": "RunSession",
    "AsyncRunSnapshots": "RunSnapshots",
    "AsyncRunState": "RunState",
    "AsyncRunUsage": "RunUsage",
    "_AsyncRunResource": "_RunResource",
    # our modules
    "_async_client": "_client",
    "_async_context": "_context",
    "_async_primitives": "_sync_primitives",
    "_async_budget": "_sync_budget",
    # the budget waits' asyncio names and their blocking twins
    "abegin_step": "begin_step",
    "acheck": "check",
    "await_parked": "wait_parked",
    "AsyncLeanPool": "SyncLeanPool",
    # httpx and the standard library
    "AsyncClient": "Client",
    "AsyncBaseTransport": "BaseTransport",
    "AsyncIterator": "Iterator",
    "aread": "read",
    "aiter_lines": "iter_lines",
    "aclose": "close",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
}

# Names rewritten in docstrings and comments too (module names are not: prose about the
# hand-written source stays true in the generated file).
TEXT_NAMES = {
    **{name: new for name, new in CODE_NAMES.items() if name[0].isupper() or name.startswith("_Async")},
    "aclose": "close",
    "tidebase.aio": "tidebase",
}
_TEXT_RE = re.compile(
    r"(?<![\w.])(" + "|".join(re.escape(n) for n in sorted(TEXT_NAMES, key=len, reverse=True)) + r")(?![\w])"
)

ASYNC_ONLY_BEGIN = "# unasync: async-only begin"
ASYNC_ONLY_END = "# unasync: async-only end"

_TEXT_TOKENS = {tokenize.STRING, tokenize.COMMENT} | (
    {tokenize.FSTRING_MIDDLE} if hasattr(tokenize, "FSTRING_MIDDLE") else set()  # Python 3.12+
)
_SKIP = {tokenize.NL, tokenize.COMMENT}


def header(source: str) -> str:
    return f"# generated from {source} by scripts/unasync.py; do not edit (make sdk-sync)\n"


def drop_async_only(text: str, source: str) -> str:
    kept: list[str] = []
    skipping = False
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        marker = line.strip()
        if marker == ASYNC_ONLY_BEGIN:
            if skipping:
                raise SystemExit(f"{source}:{number}: nested {ASYNC_ONLY_BEGIN!r}")
            skipping = True
        elif marker == ASYNC_ONLY_END:
            if not skipping:
                raise SystemExit(f"{source}:{number}: {ASYNC_ONLY_END!r} without a begin")
            skipping = False
        elif not skipping:
            kept.append(line)
    if skipping:
        raise SystemExit(f"{source}: {ASYNC_ONLY_BEGIN!r} is never ended")
    return "".join(kept)


def _is_name(tok: tokenize.TokenInfo) -> bool:
    return tok.type == tokenize.NAME and not keyword.iskeyword(tok.string)


def _primary_end(tokens: list[tokenize.TokenInfo], start: int) -> int | None:
    """Index of the ``)`` closing a group whose content from ``start`` is one primary
    (``a.b(c)[d]``), or None."""
    depth = 0
    for index in range(start, len(tokens)):
        tok = tokens[index]
        if tok.type in _SKIP:
            continue
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            if depth == 0:
                return index if tok.string == ")" else None
            depth -= 1
        elif depth == 0 and not (_is_name(tok) or (tok.type == tokenize.OP and tok.string == ".")):
            return None
    return None


def rewrite(text: str, source: str) -> str:
    """Tokens of the async source turned into the sync source (not yet formatted)."""
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(position: tuple[int, int]) -> int:
        return starts[position[0] - 1] + position[1]

    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    edits: list[tuple[int, int, str]] = []
    for index, tok in enumerate(tokens):
        nxt = tokens[index + 1] if index + 1 < len(tokens) else None
        if tok.type == tokenize.NAME and tok.string in ("async", "await"):
            if tok.string == "async" and (nxt is None or nxt.string not in ("def", "with", "for")):
                raise SystemExit(f"{source}:{tok.start[0]}: `async` before {nxt and nxt.string!r}")
            end = offset(nxt.start) if nxt is not None and nxt.start[0] == tok.end[0] else offset(tok.end)
            edits.append((offset(tok.start), end, ""))
            before = tokens[index - 1] if index else None
            opener = tokens[index - 2] if index > 1 else None
            grouping = before is not None and before.type == tokenize.OP and before.string == "("
            if grouping and opener is not None and (_is_name(opener) or opener.string in (")", "]")):
                grouping = False  # a call's parentheses, not a group
            close = _primary_end(tokens, index + 1) if grouping and tok.string == "await" else None
            if before is not None and close is not None:
                edits.append((offset(before.start), offset(before.end), ""))
                edits.append((offset(tokens[close].start), offset(tokens[close].end), ""))
        elif tok.type == tokenize.NAME and tok.string in CODE_NAMES:
            edits.append((offset(tok.start), offset(tok.end), CODE_NAMES[tok.string]))
        elif tok.type in _TEXT_TOKENS:
            new = _TEXT_RE.sub(lambda m: TEXT_NAMES[m.group(1)], tok.string)
            if new != tok.string:
                edits.append((offset(tok.start), offset(tok.end), new))
    out = text
    for start, end, new in sorted(edits, reverse=True):
        out = out[:start] + new + out[end:]
    return out


def check_names(text: str, target: str) -> None:
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.NAME and ("async" in tok.string.lower() or tok.string == "await"):
            raise SystemExit(
                f"{target}:{tok.start[0]}: {tok.string!r} survived the rewrite; add it to CODE_NAMES in "
                "scripts/unasync.py or move the difference into _async_primitives.py/_sync_primitives.py"
            )


def ruff(args: list[str], text: str, target: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", target, "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,  # the project's ruff settings, wherever the files are
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"ruff {' '.join(args)} failed on the generated {target}:\n{done.stdout}{done.stderr}")
    return done.stdout


def generate(source: str, target: str, root: Path = ROOT) -> str:
    text = (root / source).read_text()
    text = rewrite(drop_async_only(text, source), source)
    check_names(text, target)
    text = header(source) + text
    text = ruff(["check", "--select", "I", "--fix", "--quiet"], text, target)
    return ruff(["format", "--quiet"], text, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail (exit 1) when a generated file is stale")
    parser.add_argument("--out", type=Path, help="write the generated files under this folder instead")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to read (and check) (default: this one)")
    options = parser.parse_args(argv)
    stale = []
    for source, target in PAIRS.items():
        generated = generate(source, target, options.root)
        if options.check:
            current = (options.root / target).read_text() if (options.root / target).exists() else ""
            if current != generated:
                stale.append(target)
                sys.stdout.writelines(
                    difflib.unified_diff(
                        current.splitlines(keepends=True),
                        generated.splitlines(keepends=True),
                        f"{target} (committed)",
                        f"{target} (generated from {source})",
                    )
                )
            continue
        path = (options.out or options.root) / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(generated)
    if stale:
        print(f"\nstale: {', '.join(stale)}; run `make sdk-sync` (scripts/unasync.py) and commit the result")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
