"""The OpenAPI response checker catches bodies that do not match the document."""

from __future__ import annotations

import pytest

from livedesk.platform.testing.openapi import OpenApi

DOC = """
openapi: 3.1.0
info: {title: t, version: "1"}
paths:
  /things/{id}:
    get:
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Thing"}
        "404": {$ref: "#/components/responses/Error"}
components:
  responses:
    Error:
      description: e
      content:
        application/json:
          schema:
            type: object
            required: [error]
            properties: {error: {$ref: "#/components/schemas/Message"}}
  schemas:
    Thing:
      type: object
      additionalProperties: false
      required: [id]
      properties: {id: {type: string, format: uuid}}
    Message:
      type: object
      required: [code]
      properties: {code: {type: string}}
"""


def test_matching_bodies_pass() -> None:
    spec = OpenApi(DOC)
    spec.check("GET", "/things/{id}", 200, {"id": "0190b4a2-7c1e-7d3a-9f00-2b5c8e4d1a6f"})
    spec.check("GET", "/things/{id}", 404, {"error": {"code": "not_found"}})
    assert spec.operations() == [("GET", "/things/{id}")]


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, {"id": "not-a-uuid"}),
        (200, {"id": "0190b4a2-7c1e-7d3a-9f00-2b5c8e4d1a6f", "extra": 1}),
        (404, {"error": {}}),
        (500, {"error": {"code": "x"}}),
    ],
    ids=["format", "extra-field", "nested-ref", "undocumented-status"],
)
def test_mismatches_fail(status: int, body: object) -> None:
    with pytest.raises(AssertionError):
        OpenApi(DOC).check("GET", "/things/{id}", status, body)
