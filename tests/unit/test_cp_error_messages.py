"""The control plane's error messages have one style: `<code>: <what was wrong>`.

`<code>` is the envelope code of the error raised (`not_found: capsule cl-…`): the
`wrenn` SDK's exceptions print the message alone, so it says which kind of error it is.
The rest says what was wrong, with the value, and no closing period. Checked on every
error built from a literal in the package's source, so a new one cannot slip in another
style.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pywrenn.controlplane
from pywrenn.controlplane import errors

PACKAGE = Path(pywrenn.controlplane.__file__).parent
# Still on the older `invalid:` prefix for InvalidInput; they change with their next rework.
NOT_YET = {"hostclient.py", "services/guest.py"}
CODES = {
    name: cls.code
    for name, cls in inspect.getmembers(errors, inspect.isclass)
    # These two build their message from their arguments (checked below).
    if issubclass(cls, errors.ControlPlaneError)
    and cls not in (errors.InvalidState, errors.HostHasCapsules)
}


def _literal(node: ast.expr) -> str | None:
    """A message's text with `{}` for each interpolation, or None if not a literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            part.value if isinstance(part, ast.Constant) else "{}" for part in node.values
        )
    return None


def _messages() -> list[tuple[str, int, str, str]]:
    """(file, line, expected code, message) for every error built from a literal."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).as_posix()
        if where in NOT_YET:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in CODES:
                code, message = CODES[name], _literal(node.args[0])
            elif name == "envelope" and len(node.args) >= 3:
                code_node = node.args[1]
                code = code_node.value if isinstance(code_node, ast.Constant) else None
                message = _literal(node.args[2])
            else:
                continue
            if isinstance(code, str) and message is not None:
                found.append((where, node.lineno, code, message))
    return found


def test_the_scan_sees_the_control_planes_errors() -> None:
    seen = {code for _, _, code, _ in _messages()}
    assert {"invalid_request", "not_found", "conflict", "unauthorized", "internal_error"} <= seen


def test_every_message_starts_with_its_code() -> None:
    wrong = [
        f"{where}:{line}: {message!r} should start with {code!r}"
        for where, line, code, message in _messages()
        if not message.startswith(f"{code}: ")
    ]
    assert wrong == []


def test_every_message_is_a_sentence_without_a_closing_period() -> None:
    wrong = [
        f"{where}:{line}: {message!r}"
        for where, line, _, message in _messages()
        if message.endswith(".") or message.split(": ", 1)[1][:1].isspace()
    ]
    assert wrong == []


def test_invalid_state_names_both_statuses() -> None:
    error = errors.InvalidState("cl-x", "stopped", "pause")
    assert error.message == "invalid_state: capsule cl-x is stopped, cannot pause"
    assert errors.HostHasCapsules("h", ["cl-1"]).message.startswith("host_has_capsules: ")
