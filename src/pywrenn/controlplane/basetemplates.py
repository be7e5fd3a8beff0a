"""The platform's base templates: what every team can create capsules from, by name.

Owns: the one spelling of each base template's API name (`BASE_TEMPLATE`, the default of
a create and of a recipe's FROM) and the image the host agents ship it as. A base
template has no row: it is the same for every team, protected, and never deleted.
Knows nothing of: template rows (services/templates.py) or how an image is built.
"""

from __future__ import annotations

from pywrenn.images.coderunner import TEMPLATE as CODE_RUNNER_IMAGE
from pywrenn.images.manifest import DEFAULT_TEMPLATE as BASE_IMAGE

BASE_TEMPLATE = "minimal-ubuntu"
# The `wrenn` SDK's code runner (`wrenn.code_runner.Capsule`) asks for this name.
CODE_RUNNER_TEMPLATE = "code-runner-beta"
# API name → the image's name on every host agent (its directory under images/).
BASE_TEMPLATES: dict[str, str] = {
    BASE_TEMPLATE: BASE_IMAGE,
    CODE_RUNNER_TEMPLATE: CODE_RUNNER_IMAGE,
}


def is_base(name: str) -> bool:
    return name in BASE_TEMPLATES
