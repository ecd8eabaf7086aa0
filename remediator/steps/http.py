"""`http` step: one request to a service's API (CAPE: delete a pending task).

The scheme and host are the operator's (a templated one is refused when the playbook loads).
Each templated value in the URL must fit inside one path segment (or query value): one with a
`/`, `\\`, `%`, a control character, or that is empty, `.` or `..` is refused (outcome
`refused`, nothing sent) rather than escaped, because servers that decode `%2F` before routing
would still follow it; anything else is percent-escaped. `query:` values are encoded as query
values. Headers are static (secrets come from `${ENV}`), the JSON body's templated strings are
JSON-encoded, and a dry run sends nothing.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

import aiohttp
from pydantic import Field, field_validator
from yarl import URL

from remediator.steps.base import Refused, RunContext, StepFailed, StepResult, StepSpec, StepType
from remediator.templating import Template, is_templated, url_segment
from taskmedic.config.model import Duration

_ORIGIN = re.compile(r"^https?://[^/]+")


class HttpSpec(StepSpec):
    counts_effects: ClassVar[bool] = False
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: Template
    query: dict[str, Template] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    body: dict[str, Template] | None = None  # sent as JSON
    timeout: Duration = Field(default=10.0, gt=0)
    expect_status: list[int] = Field(default_factory=lambda: [200, 201, 202, 204])

    @field_validator("url")
    @classmethod
    def _origin_fixed(cls, url: str) -> str:
        origin = _ORIGIN.match(url)
        if origin is None:
            raise ValueError("expected an http:// or https:// URL")
        if is_templated(origin.group(0)):
            raise ValueError("the scheme and host cannot be templated; only the path and query")
        return url

    def free_text(self, field: str, rows_used: bool) -> bool:
        return field == "body"


def _summary(text: str) -> str:
    return text[:300].replace("\r", " ").replace("\n", " ")


class HttpStep(StepType[HttpSpec]):
    key: ClassVar[str] = "http"
    spec: ClassVar[type[StepSpec]] = HttpSpec

    async def run(self, spec: HttpSpec, ctx: RunContext) -> StepResult:
        url = URL(ctx.render(spec.url, url_segment), encoded=True)
        if is_templated(spec.url) and any(part in (".", "..") for part in url.raw_path.split("/")):
            raise Refused(f"{url.raw_path!r} has a '.' or '..' segment; refused")
        if spec.query:
            url = url.update_query({k: ctx.render(v) for k, v in spec.query.items()})
        body = {k: ctx.render(v) for k, v in spec.body.items()} if spec.body is not None else None
        detail: dict[str, Any] = {"method": spec.method, "url": str(url)}
        if ctx.dry_run:
            return StepResult(rows=0, detail={**detail, "sent": False})
        status, text = await self._send(spec, url, body)
        detail.update(status=status, response=_summary(text))
        if status not in spec.expect_status:
            raise StepFailed(f"{spec.method} {url} answered {status}: {_summary(text)}", detail)
        return StepResult(rows=1, detail=detail)

    async def _send(self, spec: HttpSpec, url: URL, body: dict[str, str] | None) -> tuple[int, str]:
        timeout = aiohttp.ClientTimeout(total=spec.timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, \
                    session.request(spec.method, url, headers=spec.headers, json=body,
                                    allow_redirects=False) as response:
                return response.status, await response.text(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise StepFailed(f"{spec.method} {url}: {type(e).__name__}: {e}") from None
