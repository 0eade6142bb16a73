"""Checking real HTTP responses against a service's OpenAPI 3.1 document."""

from __future__ import annotations

from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["OpenApi"]

_METHODS = {"get", "post", "put", "patch", "delete"}


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


class OpenApi:
    """An OpenAPI 3.1 document whose response schemas validate real bodies."""

    def __init__(self, text: str) -> None:
        self.document: dict[str, Any] = yaml.safe_load(text)
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource("urn:openapi", resource)

    def operations(self) -> list[tuple[str, str]]:
        """(METHOD, path template) of every operation."""
        return [
            (method.upper(), path)
            for path, item in self.document["paths"].items()
            for method in item
            if method in _METHODS
        ]

    def _response_pointer(self, method: str, path: str, status: int) -> str:
        """JSON pointer of the documented response (following one $ref)."""
        responses = self.document["paths"][path][method.lower()]["responses"]
        if str(status) not in responses:
            raise AssertionError(f"{method} {path} does not document status {status}")
        response = responses[str(status)]
        if "$ref" in response:
            return str(response["$ref"]).removeprefix("#")
        return f"/paths/{_escape(path)}/{method.lower()}/responses/{status}"

    def check(self, method: str, path: str, status: int, body: Any) -> None:
        """Raise AssertionError unless ``body`` matches the documented response."""
        pointer = self._response_pointer(method, path, status)
        response: Any = self.document
        for token in pointer.strip("/").split("/"):
            response = response[token.replace("~1", "/").replace("~0", "~")]
        if "schema" not in response.get("content", {}).get("application/json", {}):
            return
        schema_ref = f"urn:openapi#{pointer}/content/application~1json/schema"
        validator = jsonschema.Draft202012Validator(
            {"$ref": schema_ref},
            registry=self._registry,
            format_checker=jsonschema.FormatChecker(),
        )
        errors = sorted(validator.iter_errors(body), key=str)
        if errors:
            raise AssertionError(f"{method} {path} {status}: {errors[0].message} in {body!r}")
