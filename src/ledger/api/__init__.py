"""HTTP API of the ledger: Litestar routes over the command side and the projections.

* ``app``: :func:`create_app` wires the routes to the services, opens the read
  pool and runs the projector in the background.
* ``routes``: one handler per endpoint. Writes run the command side in a worker
  thread, and reads query the projections through :mod:`ledger.queries`.
* ``schemas``: request and response bodies (msgspec), with money as decimal strings.
* ``problems``: the mapping of every error to an RFC 9457 problem document.
* ``context`` and ``middleware``: request id, actor, the JSON body check and
  the per-request log line.
* ``docs``: the offline HTML index served at ``/schema``.

The OpenAPI document is served at ``/schema/openapi.json`` and committed as
``api/openapi.json`` (regenerate it with ``scripts/export_openapi.py``).
"""

from ledger.api.app import create_app, openapi_document

__all__ = ["create_app", "openapi_document"]
