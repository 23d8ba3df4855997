"""The live dashboard: a JSON API over an experiment root's stores plus one static page.

    rapidfire dashboard [EXPERIMENTS_PATH] [--host 127.0.0.1] [--port 8765] [--token T | --no-token]
                        [--allow-code-edits]

Modules (none imports torch; only `app` and `server` import Starlette / uvicorn):

- `experiments`: which directories under the root are experiments; safe name resolution
- `token`: this user's token, kept in a private file (`~/.rapidfire/dashboard_token`)
- `summary`: run rows for display (knobs that vary, latest metrics), shared with the CLI
- `app`: `create_app(root, token, allow_code_edits)`, the Starlette application (API, page,
  token check, read-only GETs)
- `server`: `serve(root, host, port, token)` (blocking) and `DashboardServer` (a thread)
"""
