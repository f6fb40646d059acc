"""The API reference page at ``/schema``, which works without network access.

Litestar's default page at ``/schema`` loads a JavaScript viewer from a CDN,
so it stays blank on a machine without internet access. :class:`SchemaIndexPlugin`
serves a plain HTML page instead: the API description, a link to the OpenAPI
document at ``/schema/openapi.json`` and a table of every operation, built
from the document itself. The page has no scripts, styles or images from
other sites.
"""

from __future__ import annotations

from html import escape
from typing import Any

from litestar import Request
from litestar.openapi.plugins import OpenAPIRenderPlugin

__all__ = ["SchemaIndexPlugin"]

_METHODS = ("get", "post", "put", "patch", "delete")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; max-width: 70rem; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
code, pre { font-family: ui-monospace, monospace; }
pre { white-space: pre-wrap; }
"""


class SchemaIndexPlugin(OpenAPIRenderPlugin):
    """Render ``/schema`` as a self-contained HTML index of the OpenAPI document."""

    def __init__(self, *, path: str = "/") -> None:
        """Serve the page at ``path`` below the OpenAPI base path."""
        super().__init__(path=path, favicon="", style="")

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        """Return the HTML page for ``openapi_schema``."""
        info = openapi_schema.get("info", {})
        title = escape(f"{info.get('title', 'API')} {info.get('version', '')}".strip())
        json_url = escape(self.get_openapi_json_route(request))
        rows = "\n".join(
            f"<tr><td><code>{escape(method.upper())}</code></td><td><code>{escape(path)}</code>"
            f"</td><td>{escape(str(operation.get('summary', '')))}</td></tr>"
            for path, item in sorted(openapi_schema.get("paths", {}).items())
            for method, operation in item.items()
            if method in _METHODS and isinstance(operation, dict)
        )
        page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{title}</h1>
<p>OpenAPI document: <a href="{json_url}">{json_url}</a>.
Load it into any OpenAPI viewer or client generator for request and response schemas.</p>
<pre>{escape(str(info.get("description", "")))}</pre>
<h2>Operations</h2>
<table>
<tr><th>method</th><th>path</th><th>summary</th></tr>
{rows}
</table>
</body>
</html>
"""
        return page.encode("utf-8")
