"""Field rules the host agent's bodies share: one rule per kind of field."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema

from pywrenn.ids import TAG_SCHEMA_PATTERN, TEMPLATE_NAME_PATTERN, IdKind, is_valid_id

MAX_TIMEOUT_S = 24 * 3600


class Strict(BaseModel):
    """A request body: a field the API does not have is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


Command = Annotated[str, Field(min_length=1)]
Tag = Annotated[str, Field(pattern=TAG_SCHEMA_PATTERN)]
TerminalDim = Annotated[int, Field(ge=1, le=4096)]
TemplateName = Annotated[str, Field(pattern=f"^{TEMPLATE_NAME_PATTERN}$")]


def check_capsule_id(value: str) -> str:
    if not is_valid_id(value, IdKind.CAPSULE):
        raise ValueError(f"capsule id {value!r} is not cl- and 16 of a-z 0-9")
    return value


def _from_base64(value: object) -> object:
    # Text is the wire form (JSON); bytes are what a caller in Python hands over.
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("data is not base64") from None
    return value


# Raw bytes in Python, base64 text on the wire (strict: no stray characters).
Base64Bytes = Annotated[
    bytes,
    BeforeValidator(_from_base64),
    PlainSerializer(lambda raw: base64.b64encode(raw).decode(), return_type=str),
    WithJsonSchema({"type": "string", "contentEncoding": "base64"}),
]
