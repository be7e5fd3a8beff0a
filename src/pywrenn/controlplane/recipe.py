"""Template build recipes: text in, a typed and validated `Recipe` out.

Owns: the Dockerfile-like recipe syntax (FROM, RUN, START, ENV, WORKDIR, USER, COPY,
HEALTHCHECK), durations, `$VAR` expansion, the size limits, and `BuildState`, the little
record of what ENV/WORKDIR/USER steps have set so far while a build runs.
Every error is a `RecipeError` naming the first physical line of the instruction.
Knows nothing of: capsules, how steps are executed, the build archive's contents.

Length: past our ~400-line guide on purpose: it is one small language, pure, and tested as one
(`test_recipe.py`); its two halves need each other (parsing checks each ENV and WORKDIR
by applying it to a `BuildState`, and applying takes the parsed instructions), so a
split would only add an import cycle or a third module of shared types.
"""

from __future__ import annotations

import math
import posixpath
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

MAX_INSTRUCTIONS = 256
MAX_INSTRUCTION_BYTES = 16 * 1024
MAX_RECIPE_BYTES = 256 * 1024
# `$VAR` expansion multiplies: `ENV A=$A$A$A$A` four times over quadruples A each time, so
# a few lines would ask for gigabytes. Each expanded value and the whole environment are
# capped, and the check runs while a value is being built, never after.
MAX_ENV_VALUE_BYTES = 64 * 1024
MAX_ENV_BYTES = 1024 * 1024

# fullmatch everywhere: `$` in a pattern would also accept a trailing newline.
_TEMPLATE_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_RETRIES = re.compile(r"[0-9]+")
_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_BARE_SECONDS = re.compile(_NUMBER)
# `ms` before `m`, or "250ms" would read as 250 minutes followed by garbage.
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_FIRST_WORD = re.compile(r"(\S+)(.*)", re.DOTALL)


class RecipeError(ValueError):
    """A recipe (or healthcheck, or duration) that cannot be accepted."""

    def __init__(self, detail: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {detail}" if line is not None else detail)
        self.detail = detail
        self.line = line


@dataclass(frozen=True, slots=True)
class Run:
    command: str
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class Start:
    command: str


@dataclass(frozen=True, slots=True)
class Env:
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Workdir:
    path: str


@dataclass(frozen=True, slots=True)
class User:
    name: str


@dataclass(frozen=True, slots=True)
class Copy:
    src: str
    dst: str


Instruction: TypeAlias = Run | Start | Env | Workdir | User | Copy


@dataclass(frozen=True, slots=True)
class Step:
    index: int
    line: int
    text: str
    instruction: Instruction


@dataclass(frozen=True, slots=True)
class Healthcheck:
    command: str
    interval_s: float = 3.0
    timeout_s: float = 10.0
    start_period_s: float = 0.0
    # 0 = keep trying until the build's own deadline.
    retries: int = 0


@dataclass(frozen=True, slots=True)
class Recipe:
    base: str | None
    steps: tuple[Step, ...]
    healthcheck: Healthcheck | None


def parse_duration(text: str) -> float:
    """Seconds in `text`: `0`, `1.5` (seconds), `250ms`, `1.5s`, `5m`, `1h`, `1m30s`."""
    s = text.strip()
    if not s:
        raise RecipeError("empty duration")
    if _BARE_SECONDS.fullmatch(s):
        seconds = float(s)
    else:
        seconds = 0.0
        pos = 0
        while pos < len(s):
            m = _DURATION_PART.match(s, pos)
            if m is None:
                raise RecipeError(f"bad duration {text!r}")
            seconds += float(m[1]) * _UNIT_SECONDS[m[2]]
            pos = m.end()
    # Digits alone can still overflow a float to inf.
    if not math.isfinite(seconds):
        raise RecipeError(f"duration too large: {text!r}")
    return seconds


def expand(value: str, env: Mapping[str, str], *, limit: int = MAX_ENV_VALUE_BYTES) -> str:
    """`$VAR` and `${VAR}` from `env` (missing: empty), `$$` a literal `$`, any other `$` kept.

    RecipeError as soon as the result would pass `limit` UTF-8 bytes (before it is built).
    """
    out: list[str] = []
    size = 0

    def put(piece: str) -> None:
        nonlocal size
        size += len(piece.encode())
        if size > limit:
            raise RecipeError(f"value expands to more than {limit} bytes: {value[:60]!r}")
        out.append(piece)

    pos = 0
    while True:
        dollar = value.find("$", pos)
        if dollar < 0:
            put(value[pos:])
            return "".join(out)
        put(value[pos:dollar])
        after = dollar + 1
        if value.startswith("$", after):
            put("$")
            pos = after + 1
        elif value.startswith("{", after):
            close = value.find("}", after + 1)
            if close < 0:
                raise RecipeError(f"unterminated ${{ in {value!r}")
            name = value[after + 1 : close]
            if not _ENV_KEY.fullmatch(name):
                raise RecipeError(f"bad substitution ${{{name}}}")
            put(env.get(name, ""))
            pos = close + 1
        else:
            m = _ENV_KEY.match(value, after)
            if m is None:
                put("$")
                pos = after
            else:
                put(env.get(m[0], ""))
                pos = m.end()


def env_bytes(env: Mapping[str, str]) -> int:
    """The environment's size as a process sees it: `KEY=VALUE\0` per variable."""
    return sum(len(k.encode()) + len(v.encode()) + 2 for k, v in env.items())


@dataclass
class BuildState:
    """What ENV, WORKDIR and USER steps have set so far; starts as the capsule's defaults."""

    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/home/user"
    user: str = "user"

    def apply(self, instruction: Instruction) -> None:
        if isinstance(instruction, Env):
            # One pair at a time, so a later pair sees an earlier one (`A=1 B=$A` gives B=1).
            total = env_bytes(self.env)
            for key, raw in instruction.pairs:
                try:
                    value = expand(raw, self.env)
                except RecipeError as e:
                    raise RecipeError(f"ENV {key}: {e.detail}") from None
                old = self.env.get(key)
                if old is not None:
                    total -= env_bytes({key: old})
                total += env_bytes({key: value})
                if total > MAX_ENV_BYTES:
                    raise RecipeError(f"ENV {key}: environment grows past {MAX_ENV_BYTES} bytes")
                self.env[key] = value
        elif isinstance(instruction, Workdir):
            self.workdir = self.resolve(expand(instruction.path, self.env))
        elif isinstance(instruction, User):
            self.user = instruction.name

    def resolve(self, path: str) -> str:
        resolved = posixpath.normpath(posixpath.join(self.workdir, path))
        # POSIX lets normpath keep a leading "//"; in the capsule it is just "/".
        if resolved.startswith("//"):
            resolved = "/" + resolved.lstrip("/")
        return resolved


def parse_healthcheck(text: str) -> Healthcheck:
    """The HEALTHCHECK syntax without the keyword: `[--interval=..] ... <command>`."""
    if len(text.encode()) > MAX_INSTRUCTION_BYTES:
        raise RecipeError(f"healthcheck longer than {MAX_INSTRUCTION_BYTES} bytes")
    options, command = _split_options(
        text.strip(), "HEALTHCHECK", ("interval", "timeout", "start-period", "retries")
    )
    if not command:
        raise RecipeError("HEALTHCHECK needs a command")
    interval = _option_duration(options, "interval", positive=True)
    timeout = _option_duration(options, "timeout", positive=True)
    start_period = _option_duration(options, "start-period", positive=False)
    retries = options.get("retries")
    if retries is not None and not _RETRIES.fullmatch(retries):
        raise RecipeError(f"--retries must be a whole number, not {retries!r}")
    return Healthcheck(
        command,
        interval_s=3.0 if interval is None else interval,
        timeout_s=10.0 if timeout is None else timeout,
        start_period_s=0.0 if start_period is None else start_period,
        retries=0 if retries is None else int(retries),
    )


def parse_recipe(text: str) -> Recipe:
    if len(text.encode()) > MAX_RECIPE_BYTES:
        raise RecipeError(f"recipe larger than {MAX_RECIPE_BYTES} bytes")
    if "\0" in text:
        # Nothing downstream (argv, paths, environment) can carry a NUL.
        raise RecipeError("recipe contains a NUL character")
    base: str | None = None
    healthcheck: Healthcheck | None = None
    steps: list[Step] = []
    for count, (line, logical) in enumerate(_logical_lines(text), start=1):
        try:
            if count > MAX_INSTRUCTIONS:
                raise RecipeError(f"more than {MAX_INSTRUCTIONS} instructions")
            if len(logical.encode()) > MAX_INSTRUCTION_BYTES:
                raise RecipeError(f"instruction longer than {MAX_INSTRUCTION_BYTES} bytes")
            m = _FIRST_WORD.fullmatch(logical)
            assert m is not None  # _logical_lines yields only non-blank text
            keyword, rest = m[1].upper(), m[2]
            args = rest.strip()
            if keyword == "FROM":
                if count != 1:
                    raise RecipeError("FROM must be the first instruction")
                base = _parse_from(args)
            elif keyword == "HEALTHCHECK":
                if healthcheck is not None:
                    raise RecipeError("HEALTHCHECK given twice")
                healthcheck = parse_healthcheck(args)
            else:
                instruction = _parse_step(keyword, m[1], args)
                steps.append(Step(len(steps), line, keyword + rest, instruction))
        except RecipeError as e:
            if e.line is not None:
                raise
            raise RecipeError(e.detail, line) from None
    if not steps:
        raise RecipeError("empty recipe")
    recipe = Recipe(base, tuple(steps), healthcheck)
    check_expansion(recipe, {})
    return recipe


def check_expansion(recipe: Recipe, env: Mapping[str, str]) -> None:
    """Expand every ENV and WORKDIR from `env` (the base template's defaults) as a build
    would, so a recipe that would pass the size caps fails now, naming its line."""
    state = BuildState(env=dict(env))
    for step in recipe.steps:
        if isinstance(step.instruction, Env | Workdir):
            try:
                state.apply(step.instruction)
            except RecipeError as e:
                raise RecipeError(e.detail, step.line) from None


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first physical line number, instruction with continuations joined by one space)."""
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.split("\n"), start=1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            continue
        if not stripped:
            # A blank line ends a dangling continuation rather than gluing the next
            # instruction onto it: a stray trailing backslash should not merge two steps.
            if parts:
                yield from _joined(start, parts)
                parts = []
            continue
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        yield from _joined(start, parts)
        parts = []
    if parts:
        yield from _joined(start, parts)


def _joined(start: int, parts: list[str]) -> Iterator[tuple[int, str]]:
    logical = " ".join(p for p in parts if p)
    if logical:
        yield start, logical


def _parse_from(args: str) -> str:
    words = args.split()
    if len(words) != 1:
        raise RecipeError("FROM takes one template name")
    if not _TEMPLATE_NAME.fullmatch(words[0]):
        raise RecipeError(f"bad template name {words[0]!r}")
    return words[0]


def _parse_step(keyword: str, written: str, args: str) -> Instruction:
    if keyword == "RUN":
        options, command = _split_options(args, "RUN", ("timeout",))
        if not command:
            raise RecipeError("RUN needs a command")
        return Run(command, _option_duration(options, "timeout", positive=True))
    if keyword == "START":
        if not args:
            raise RecipeError("START needs a command")
        return Start(args)
    if keyword == "ENV":
        return Env(_parse_env(args))
    if keyword == "WORKDIR":
        words = _shell_words(args, "WORKDIR")
        if len(words) != 1 or not words[0]:
            raise RecipeError("WORKDIR takes one path")
        # Checked now so a bad ${ is reported with its line, not midway through a build.
        expand(words[0], {})
        return Workdir(words[0])
    if keyword == "USER":
        words = _shell_words(args, "USER")
        if len(words) != 1:
            raise RecipeError("USER takes one name")
        if not _USER_NAME.fullmatch(words[0]):
            raise RecipeError(f"bad user name {words[0]!r}")
        return User(words[0])
    if keyword == "COPY":
        return _parse_copy(args)
    raise RecipeError(f"unknown instruction {written!r}")


def _parse_env(args: str) -> tuple[tuple[str, str], ...]:
    if not args:
        raise RecipeError("ENV needs KEY=VALUE")
    m = _FIRST_WORD.fullmatch(args)
    assert m is not None
    pairs: list[tuple[str, str]] = []
    if "=" not in m[1]:
        # Legacy `ENV KEY value with spaces`: the rest of the line, unsplit and unquoted.
        key, value = m[1], m[2].strip()
        if not value:
            raise RecipeError(f"ENV {key} needs a value")
        pairs.append((key, value))
    else:
        for word in _shell_words(args, "ENV"):
            key, eq, value = word.partition("=")
            if not eq:
                raise RecipeError(f"ENV argument {word!r} is not KEY=VALUE")
            pairs.append((key, value))
    for key, value in pairs:
        if not _ENV_KEY.fullmatch(key):
            raise RecipeError(f"bad ENV name {key!r}")
        # Checked now so a bad ${ is reported with its line, not midway through a build.
        expand(value, {})
    return tuple(pairs)


def _parse_copy(args: str) -> Copy:
    words = _shell_words(args, "COPY")
    if len(words) != 2 or not all(words):
        raise RecipeError("COPY takes a source and a destination")
    src, dst = words
    if src.startswith("/"):
        raise RecipeError(f"COPY source must be relative to the build archive: {src!r}")
    if ".." in src.split("/"):
        raise RecipeError(f"COPY source may not leave the build archive: {src!r}")
    return Copy(src, dst)


def _shell_words(args: str, keyword: str) -> list[str]:
    try:
        return shlex.split(args, posix=True)
    except ValueError as e:
        raise RecipeError(f"{keyword}: {e}") from None


def _split_options(args: str, keyword: str, allowed: tuple[str, ...]) -> tuple[dict[str, str], str]:
    """Leading `--name=value` words, then the command as written."""
    options: dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        m = _FIRST_WORD.fullmatch(rest)
        assert m is not None
        word, rest = m[1], m[2].strip()
        name, eq, value = word[2:].partition("=")
        if name not in allowed:
            raise RecipeError(f"unknown option --{name} for {keyword}")
        if not eq or not value:
            raise RecipeError(f"--{name} needs a value")
        if name in options:
            raise RecipeError(f"--{name} given twice")
        options[name] = value
    return options, rest


def _option_duration(options: Mapping[str, str], name: str, *, positive: bool) -> float | None:
    if name not in options:
        return None
    try:
        seconds = parse_duration(options[name])
    except RecipeError as e:
        raise RecipeError(f"--{name}: {e.detail}") from None
    if positive and seconds <= 0:
        raise RecipeError(f"--{name} must be more than 0")
    return seconds
