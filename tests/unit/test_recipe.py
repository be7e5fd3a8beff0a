"""controlplane/recipe.py: recipe syntax, validation, durations, expansion and BuildState."""

from __future__ import annotations

import pytest

from pywrenn.controlplane.recipe import (
    MAX_ENV_BYTES,
    MAX_ENV_VALUE_BYTES,
    MAX_INSTRUCTION_BYTES,
    MAX_INSTRUCTIONS,
    MAX_RECIPE_BYTES,
    BuildState,
    Copy,
    Env,
    Healthcheck,
    RecipeError,
    Run,
    Start,
    User,
    Workdir,
    check_expansion,
    expand,
    parse_duration,
    parse_healthcheck,
    parse_recipe,
)

pytestmark = pytest.mark.unit


def only(text: str) -> object:
    """The instruction of a one-step recipe."""
    recipe = parse_recipe(text)
    assert len(recipe.steps) == 1
    return recipe.steps[0].instruction


def error(text: str) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text)
    return info.value


# --- the whole recipe ---------------------------------------------------------------


def test_full_recipe_parses_into_steps_in_order() -> None:
    recipe = parse_recipe(
        "FROM base-1.0\n"
        "ENV A=1\n"
        "WORKDIR /app\n"
        "COPY . /app\n"
        "USER app\n"
        "RUN make\n"
        "START ./server --port 80\n"
        "HEALTHCHECK curl -f localhost\n"
    )
    assert recipe.base == "base-1.0"
    assert [s.instruction for s in recipe.steps] == [
        Env((("A", "1"),)),
        Workdir("/app"),
        Copy(".", "/app"),
        User("app"),
        Run("make"),
        Start("./server --port 80"),
    ]
    assert [s.index for s in recipe.steps] == [0, 1, 2, 3, 4, 5]
    assert [s.line for s in recipe.steps] == [2, 3, 4, 5, 6, 7]
    assert recipe.healthcheck == Healthcheck("curl -f localhost")


def test_without_from_or_healthcheck() -> None:
    recipe = parse_recipe("RUN true")
    assert recipe.base is None and recipe.healthcheck is None


def test_comments_and_blank_lines_are_skipped_and_lines_still_counted() -> None:
    recipe = parse_recipe("# top\n\n   # indented comment\nRUN a  # not a comment\n\nRUN b\n")
    assert [s.line for s in recipe.steps] == [4, 6]
    assert recipe.steps[0].instruction == Run("a  # not a comment")


def test_keywords_are_case_insensitive_and_text_upper_cases_only_the_keyword() -> None:
    recipe = parse_recipe("from base\nrun Echo Hi\nEnV A=b\n")
    assert recipe.base == "base"
    assert recipe.steps[0].text == "RUN Echo Hi"
    assert recipe.steps[0].instruction == Run("Echo Hi")
    assert recipe.steps[1].text == "ENV A=b"


def test_continuations_join_with_one_space_and_skip_comment_lines() -> None:
    recipe = parse_recipe(
        "RUN apt-get update && \\\n  # why\n    apt-get install -y curl   \\\n  jq\n"
    )
    step = recipe.steps[0]
    assert step.instruction == Run("apt-get update && apt-get install -y curl jq")
    assert step.text == "RUN apt-get update && apt-get install -y curl jq"
    assert step.line == 1


def test_continuation_at_end_of_text_or_before_blank_line_ends_the_instruction() -> None:
    recipe = parse_recipe("RUN a \\\n\nRUN b \\")
    assert [s.instruction for s in recipe.steps] == [Run("a"), Run("b")]


def test_crlf_line_endings() -> None:
    recipe = parse_recipe("RUN a \\\r\n  b\r\nUSER bob\r\n")
    assert [s.instruction for s in recipe.steps] == [Run("a b"), User("bob")]


@pytest.mark.parametrize(
    "text", ["", "\n\n", "# only a comment\n", "FROM base\n", "HEALTHCHECK true"]
)
def test_recipe_without_steps_is_empty(text: str) -> None:
    e = error(text)
    assert e.line is None and str(e) == "empty recipe"


def test_unknown_instruction() -> None:
    e = error("RUN a\n\nADD x y\n")
    assert e.line == 3
    assert str(e) == "line 3: unknown instruction 'ADD'"


def test_error_line_is_first_physical_line_of_the_instruction() -> None:
    e = error("RUN a\n# c\nCOPY \\\n  /etc \\\n  /x\n")
    assert e.line == 3
    assert str(e).startswith("line 3: COPY source")


# --- FROM ---------------------------------------------------------------------------


def test_from_only_as_first_instruction() -> None:
    assert error("RUN a\nFROM base\n").line == 2
    assert error("HEALTHCHECK true\nFROM base\nRUN a\n").line == 2
    assert error("FROM a\nFROM b\nRUN a\n").line == 2
    assert parse_recipe("# comment\n\nFROM base\nRUN a").base == "base"


@pytest.mark.parametrize("args", ["", "a b", "-bad", "a/b", "x" * 64, "bad\tname x"])
def test_from_rejects_bad_names(args: str) -> None:
    assert error(f"FROM {args}\nRUN a").line == 1


def test_from_accepts_longest_name() -> None:
    assert parse_recipe(f"FROM {'a' * 63}\nRUN a").base == "a" * 63


# --- RUN and START ------------------------------------------------------------------


def test_run_keeps_the_command_verbatim() -> None:
    assert only("RUN  echo 'a   b' | tr a b > \"$HOME/x\"  ") == Run(
        "echo 'a   b' | tr a b > \"$HOME/x\""
    )


def test_run_timeout_option() -> None:
    assert only("RUN --timeout=5m make -j4") == Run("make -j4", timeout_s=300.0)
    assert only("RUN --timeout=1.5 sleep 1") == Run("sleep 1", timeout_s=1.5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("RUN", "RUN needs a command"),
        ("RUN   ", "RUN needs a command"),
        ("RUN --timeout=5s", "RUN needs a command"),
        ("RUN --retries=3 make", "unknown option --retries for RUN"),
        ("RUN --timeout make", "--timeout needs a value"),
        ("RUN --timeout= make", "--timeout needs a value"),
        ("RUN --timeout=1s --timeout=2s make", "--timeout given twice"),
        ("RUN --timeout=soon make", "--timeout: bad duration 'soon'"),
        ("RUN --timeout=0 make", "--timeout must be more than 0"),
        ("START", "START needs a command"),
    ],
)
def test_run_and_start_errors(text: str, message: str) -> None:
    assert str(error(text)) == f"line 1: {message}"


def test_start_takes_the_rest_of_the_line() -> None:
    assert only("START --not-an-option python -m http.server") == Start(
        "--not-an-option python -m http.server"
    )


# --- ENV ----------------------------------------------------------------------------


def test_env_pairs_with_quoting_and_raw_values() -> None:
    assert only("ENV A=1 B=\"two words\" C='$HOME' D= E=x=y") == Env(
        (("A", "1"), ("B", "two words"), ("C", "$HOME"), ("D", ""), ("E", "x=y"))
    )


def test_env_legacy_form_keeps_the_rest_of_the_line() -> None:
    assert only("ENV GREETING  hello   'big'  world ") == Env(
        (("GREETING", "hello   'big'  world"),)
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ENV", "ENV needs KEY=VALUE"),
        ("ENV A", "ENV A needs a value"),
        ("ENV 1A=x", "bad ENV name '1A'"),
        ("ENV =x", "bad ENV name ''"),
        ("ENV A-B value", "bad ENV name 'A-B'"),
        ("ENV A=1 B", "ENV argument 'B' is not KEY=VALUE"),
        ('ENV A="open', "ENV: No closing quotation"),
        ("ENV A=${B", "unterminated ${ in '${B'"),
    ],
)
def test_env_errors(text: str, message: str) -> None:
    assert str(error(text)) == f"line 1: {message}"


# --- WORKDIR, USER, COPY ------------------------------------------------------------


def test_workdir_one_argument_possibly_quoted() -> None:
    assert only("WORKDIR /srv/app") == Workdir("/srv/app")
    assert only("WORKDIR 'my dir'") == Workdir("my dir")
    assert only("WORKDIR $HOME/x") == Workdir("$HOME/x")


@pytest.mark.parametrize("args", ["", "a b", "''", "'open"])
def test_workdir_errors(args: str) -> None:
    assert error(f"WORKDIR {args}").line == 1


def test_user() -> None:
    assert only("USER _svc-1") == User("_svc-1")


@pytest.mark.parametrize("args", ["", "Root", "a b", "1user", "a" * 33, "a:b"])
def test_user_errors(args: str) -> None:
    assert error(f"USER {args}").line == 1


def test_copy_forms() -> None:
    assert only("COPY . /app") == Copy(".", "/app")
    assert only("COPY 'src dir/x.txt' rel/dst") == Copy("src dir/x.txt", "rel/dst")
    assert only("COPY ./a..b/c d") == Copy("./a..b/c", "d")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("a", "COPY takes a source and a destination"),
        ("a b c", "COPY takes a source and a destination"),
        ("'' b", "COPY takes a source and a destination"),
        ("/etc/passwd b", "COPY source must be relative to the build archive: '/etc/passwd'"),
        ("../secret b", "COPY source may not leave the build archive: '../secret'"),
        ("a/../../b c", "COPY source may not leave the build archive: 'a/../../b'"),
        ("a/.. c", "COPY source may not leave the build archive: 'a/..'"),
    ],
)
def test_copy_errors(args: str, message: str) -> None:
    assert str(error(f"COPY {args}")) == f"line 1: {message}"


# --- HEALTHCHECK --------------------------------------------------------------------


def test_healthcheck_defaults() -> None:
    hc = parse_healthcheck("curl -f http://localhost:8080/")
    assert hc == Healthcheck("curl -f http://localhost:8080/", 3.0, 10.0, 0.0, 0)


def test_healthcheck_options() -> None:
    hc = parse_healthcheck(
        "--interval=500ms --timeout=2s --start-period=1m --retries=5 test -f /ready"
    )
    assert hc == Healthcheck("test -f /ready", 0.5, 2.0, 60.0, 5)


def test_healthcheck_anywhere_but_only_once() -> None:
    recipe = parse_recipe("RUN a\nhealthcheck --retries=2 true\nRUN b\n")
    assert recipe.healthcheck == Healthcheck("true", retries=2)
    assert len(recipe.steps) == 2
    e = error("HEALTHCHECK true\nRUN a\nHEALTHCHECK false\n")
    assert str(e) == "line 3: HEALTHCHECK given twice"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "HEALTHCHECK needs a command"),
        ("--interval=1s", "HEALTHCHECK needs a command"),
        ("--every=1s true", "unknown option --every for HEALTHCHECK"),
        ("--retries=-1 true", "--retries must be a whole number, not '-1'"),
        ("--retries=two true", "--retries must be a whole number, not 'two'"),
        ("--interval=0 true", "--interval must be more than 0"),
        ("--timeout=0s true", "--timeout must be more than 0"),
        ("--start-period=-1s true", "--start-period: bad duration '-1s'"),
    ],
)
def test_healthcheck_errors(text: str, message: str) -> None:
    with pytest.raises(RecipeError) as info:
        parse_healthcheck(text)
    assert info.value.line is None and str(info.value) == message


def test_healthcheck_errors_in_a_recipe_carry_the_line() -> None:
    assert str(error("RUN a\nHEALTHCHECK --retries=x true")).startswith("line 2: --retries")


# --- durations ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("42", 42.0),
        ("0.5", 0.5),
        ("1m30s", 90.0),
        ("1h2m3s4ms", 3723.004),
        (" 2s ", 2.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "  ", "-1", "-1s", "s", "1x", "1 s", "1m 30s", "1.s", ".5s", "abc", "1e3", "\u0661s"],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(RecipeError):
        parse_duration(text)


def test_parse_duration_rejects_overflow() -> None:
    with pytest.raises(RecipeError, match="too large"):
        parse_duration("9" * 400)


# --- limits -------------------------------------------------------------------------


def test_instruction_count_limit() -> None:
    assert len(parse_recipe("RUN a\n" * MAX_INSTRUCTIONS).steps) == MAX_INSTRUCTIONS
    e = error("FROM base\n" + "RUN a\n" * MAX_INSTRUCTIONS)
    assert e.line == MAX_INSTRUCTIONS + 1
    assert "more than 256 instructions" in str(e)


def test_instruction_size_limit_counts_joined_continuations() -> None:
    half = "x" * (MAX_INSTRUCTION_BYTES // 2)
    e = error(f"RUN a\nRUN {half} \\\n {half}\n")
    assert e.line == 2 and "longer than 16384 bytes" in str(e)
    assert parse_recipe("RUN " + "x" * (MAX_INSTRUCTION_BYTES - 4)).steps


def test_recipe_size_limit() -> None:
    e = error("RUN a\n" + "#" * MAX_RECIPE_BYTES)
    assert e.line is None and "larger than 262144 bytes" in str(e)


def test_nul_character_rejected() -> None:
    assert "NUL" in str(error("RUN a\0b"))


# --- expand -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expanded"),
    [
        ("$A", "1"),
        ("${A}x", "1x"),
        ("$Ax", ""),
        ("$A:$B", "1:two"),
        ("$MISSING-${MISSING}", "-"),
        ("$$A", "$A"),
        ("$$$A", "$1"),
        ("cost: 5$", "cost: 5$"),
        ("$1 $ $-", "$1 $ $-"),
        ("no dollars", "no dollars"),
    ],
)
def test_expand(value: str, expanded: str) -> None:
    assert expand(value, {"A": "1", "B": "two"}) == expanded


@pytest.mark.parametrize("value", ["${A", "x${", "${}", "${A-b}"])
def test_expand_rejects_bad_braces(value: str) -> None:
    with pytest.raises(RecipeError):
        expand(value, {"A": "1"})


# --- BuildState ---------------------------------------------------------------------


def test_build_state_defaults() -> None:
    state = BuildState()
    assert (state.env, state.workdir, state.user) == ({}, "/home/user", "user")


def test_build_state_env_chains_across_and_within_steps() -> None:
    state = BuildState(env={"PATH": "/usr/bin"})
    for step in parse_recipe("ENV A=1\nENV B=$A:2\nENV PATH=/x:$PATH C=$B.$C D=$$A").steps:
        state.apply(step.instruction)
    assert state.env == {"PATH": "/x:/usr/bin", "A": "1", "B": "1:2", "C": "1:2.", "D": "$A"}


def test_build_state_env_pairs_apply_in_order() -> None:
    state = BuildState()
    state.apply(Env((("A", "1"), ("B", "$A"), ("A", "2"))))
    assert state.env == {"A": "2", "B": "1"}


def test_build_state_workdir_resolves_relative_and_expands() -> None:
    state = BuildState(env={"SUB": "lib"})
    state.apply(Workdir("app"))
    assert state.workdir == "/home/user/app"
    state.apply(Workdir("../${SUB}/./x/"))
    assert state.workdir == "/home/user/lib/x"
    state.apply(Workdir("/srv"))
    assert state.workdir == "/srv"
    state.apply(Workdir("../../.."))
    assert state.workdir == "/"


def test_build_state_user_and_other_instructions() -> None:
    state = BuildState()
    state.apply(User("app"))
    state.apply(Run("true"))
    state.apply(Start("sleep 1"))
    state.apply(Copy(".", "/x"))
    assert state == BuildState(user="app")


def test_build_state_resolve() -> None:
    state = BuildState(workdir="/srv/app")
    assert state.resolve("data/../conf") == "/srv/app/conf"
    assert state.resolve("/etc//x/") == "/etc/x"
    assert state.resolve("//tmp") == "/tmp"
    assert state.resolve(".") == "/srv/app"
    assert state.workdir == "/srv/app"


# --- expansion limits (ENV doubling) ------------------------------------------------


def test_exponential_env_recipe_fails_at_parse_naming_the_line() -> None:
    # Three lines of `A=$A$A$A$A…` would reach tens of GiB if expanded without a cap.
    text = "ENV A=xxxxxxxx\nRUN true\n" + "\n".join(["ENV A=" + "$A" * 4096] * 3)
    err = error(text)
    assert err.line == 4  # line 3 makes A 32 KiB; line 4 would make it 128 MiB
    assert f"more than {MAX_ENV_VALUE_BYTES} bytes" in str(err) and "ENV A" in str(err)


def test_expansion_stops_before_building_the_big_value() -> None:
    big = "x" * (MAX_ENV_VALUE_BYTES // 2 + 1)
    with pytest.raises(RecipeError, match="more than"):
        expand("$A$A$A$A$A$A$A$A", {"A": big})
    assert len(expand("$A", {"A": big})) == len(big)
    assert expand("x" * MAX_ENV_VALUE_BYTES, {}) == "x" * MAX_ENV_VALUE_BYTES
    with pytest.raises(RecipeError):
        expand("é" * (MAX_ENV_VALUE_BYTES // 2 + 1), {})  # bytes, not characters


def test_whole_environment_is_capped() -> None:
    per = MAX_ENV_VALUE_BYTES - 16
    lines = ["ENV V=" + "y" * 8000, "ENV V=" + "$V" * (per // 8000)]
    count = MAX_ENV_BYTES // per + 1
    lines += [f"ENV K{i}=$V" for i in range(count)]
    err = error("\n".join(lines))
    assert 2 < (err.line or 0) <= len(lines) and "environment grows past" in str(err)


def test_check_expansion_starts_from_the_base_environment() -> None:
    recipe = parse_recipe("ENV A=$BASE$BASE")
    check_expansion(recipe, {"BASE": "x"})
    with pytest.raises(RecipeError, match="line 1: ENV A"):
        check_expansion(recipe, {"BASE": "x" * MAX_ENV_VALUE_BYTES})


def test_build_state_apply_refuses_oversized_workdir() -> None:
    state = BuildState(env={"W": "w" * MAX_ENV_VALUE_BYTES})
    with pytest.raises(RecipeError):
        state.apply(Workdir("/$W/$W"))
