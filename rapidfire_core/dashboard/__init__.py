"""The live dashboard: a JSON API over an experiment root's stores plus one static page.

    rapidfire dashboard [EXPERIMENTS_PATH] [--host 127.0.0.1] [--port 8765] [--token T]

Modules (none imports torch; only `app` and `server` import Starlette / uvicorn):

- `experiments`: which directories under the root are experiments; safe name resolution
- `summary`: run rows for display (knobs that vary, latest metrics), shared with the CLI
- `app`: `create_app(root, token)`, the Starlette application (API, page, token check)
- `server`: `serve(root, host, port, token)` (blocking) and `DashboardServer` (a thread)
"""
