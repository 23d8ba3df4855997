"""RapidFire AI's in-notebook IC Ops panel: ``InteractiveController(...).display()``.

    from rapidfire_core.fit.utils.interactive_controller import InteractiveController
    controller = InteractiveController(dispatcher_url="http://127.0.0.1:8081")
    controller.display()

An ipywidgets panel (Jupyter, JupyterLab, VS Code and Colab notebooks): a table of the
experiment's runs (status, step / max steps, latest loss and eval loss, error) and, for the run
picked in the list, Stop / Resume / Delete / Clone (a JSON edit such as
``{"learning_rate": 1e-4}``, optional warm start) and Refresh. A button writes the same command
as ``exp.stop_run(...)``, the CLI and the dashboard (source "python"); the engine applies it at
the run's next optimizer step, and the panel's last line says what became of it.

Which experiment: ``experiment=`` an `Experiment` (followed when a re-run moves it to
``<name>_1``), an experiment folder, or a name under the experiments root; by default the
experiment most recently written under the root ($RF_EXPERIMENT_PATH or ./rapidfire_experiments),
looked up again at every refresh. ``dispatcher_url`` is RapidFire AI's server address: there is
no server here (the panel reads the experiment's stores), so it is accepted and not used.

Refreshing: every ``refresh_seconds`` a daemon thread redraws the table; widget updates reach
the front end while a cell runs, so a blocking ``run_fit`` cell shows live progress. Clicks are
handled by the kernel, so during a blocking ``run_fit`` they wait until the cell ends: steer
mid-sweep with ``run_fit(..., background=True)`` (the kernel stays free) or the dashboard.
"""

from __future__ import annotations

import html
import json
import threading
from pathlib import Path
from typing import Any

from rapidfire_core.dashboard.experiments import default_root, is_experiment_dir, list_experiments

_SHOWN_METRICS = ("loss", "eval_loss")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


class InteractiveController:
    def __init__(
        self,
        dispatcher_url: str | None = None,
        experiment: Any = None,
        refresh_seconds: float = 2.0,
    ) -> None:
        """experiment: an Experiment, an experiment folder or a name under the root (module
        docstring); dispatcher_url: RapidFire AI's, accepted and not used."""
        self.dispatcher_url = dispatcher_url
        self.experiment = experiment
        self.refresh_seconds = float(refresh_seconds)
        self._stores: tuple[Path, Any, Any] | None = None  # (experiment dir, RunStore, CommandStore)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._widgets: dict[str, Any] | None = None
        self.last_message = ""

    # ---- the experiment and its stores ------------------------------------------------------------
    def experiment_dir(self) -> Path | None:
        """The experiment folder the panel shows now (None: no experiment yet)."""
        exp = self.experiment
        if exp is not None and hasattr(exp, "path"):
            return Path(exp.path)
        if exp is not None:
            path = Path(exp)
            return path if is_experiment_dir(path) else default_root() / str(exp)
        found = list_experiments(default_root())
        return Path(found[0]["path"]) if found else None

    def _open(self) -> tuple[Any, Any] | None:
        from rapidfire_core.control import CommandStore, RunStore

        path = self.experiment_dir()
        if path is None or not is_experiment_dir(path):
            return None
        if self._stores is None or self._stores[0] != path:
            self.close_stores()
            self._stores = (path, RunStore(path / "runs.db"), CommandStore(path / "runs.db"))
        return self._stores[1], self._stores[2]

    def close_stores(self) -> None:
        if self._stores is not None:
            _, runs, commands = self._stores
            runs.close()
            commands.close()
            self._stores = None

    # ---- what the panel shows and does (also usable without a front end) -------------------------
    def rows(self) -> list[dict[str, Any]]:
        """One dict per run: run_id, status, step, max_steps, loss, eval_loss, error."""
        from rapidfire_core.dashboard.summary import LatestMetrics, run_rows

        with self._lock:
            stores = self._open()
            if stores is None:
                return []
            runs, commands = stores
            view = run_rows(runs, LatestMetrics(), commands.controller_alive())
        out = []
        for run in view["runs"]:
            row = {
                "run_id": run["run_id"],
                "status": run["status"],
                "step": run["global_step"],
                "max_steps": run["max_steps"],
            }
            row |= {name: run["latest"].get(name) for name in _SHOWN_METRICS}
            row["error"] = run["error"]
            out.append(row)
        return out

    def _submit(self, op: str, run_id: int, payload: dict[str, Any] | None = None) -> str:
        with self._lock:
            stores = self._open()
            if stores is None:
                self.last_message = "no experiment to steer yet"
                return self.last_message
            command = stores[1].submit(op, int(run_id), payload, source="python")
        self.last_message = f"{op} run {run_id}: command {command.command_id} sent (applied at its next step)"
        self.refresh()
        return self.last_message

    def stop(self, run_id: int) -> str:
        return self._submit("stop", run_id)

    def resume(self, run_id: int) -> str:
        return self._submit("resume", run_id)

    def delete(self, run_id: int) -> str:
        return self._submit("delete", run_id)

    def clone(self, run_id: int, changes: dict[str, Any] | None = None, warm_start: bool = False) -> str:
        return self._submit("clone", run_id, {"changes": dict(changes or {}), "warm_start": bool(warm_start)})

    def table_html(self, rows: list[dict[str, Any]] | None = None) -> str:
        rows = self.rows() if rows is None else rows
        path = self.experiment_dir()
        title = f"<b>{html.escape(path.name)}</b>" if path is not None else "<i>no experiment yet</i>"
        head = "".join(f"<th style='padding:2px 8px;text-align:left'>{h}</th>" for h in
                       ("run", "status", "step", *_SHOWN_METRICS, "error"))  # fmt: skip
        body = []
        for row in rows:
            step = f"{row['step']}/{row['max_steps']}" if row["max_steps"] else str(row["step"])
            cells = [row["run_id"], row["status"], step, *(row[m] for m in _SHOWN_METRICS), row["error"]]
            body.append(
                "<tr>" + "".join(f"<td style='padding:2px 8px'>{_cell(c)}</td>" for c in cells) + "</tr>"
            )
        return f"<div>{title}</div><table><tr>{head}</tr>{''.join(body)}</table>"

    # ---- the widget ---------------------------------------------------------------------------------
    def _build(self) -> dict[str, Any]:
        import ipywidgets as w

        table = w.HTML()
        run = w.Dropdown(description="Run", options=[], layout=w.Layout(width="160px"))
        buttons = {name: w.Button(description=name, layout=w.Layout(width="90px"))
                   for name in ("Stop", "Resume", "Delete", "Clone", "Refresh")}  # fmt: skip
        changes = w.Text(value="{}", description="Clone edit", placeholder='{"learning_rate": 1e-4}')
        warm = w.Checkbox(value=False, description="warm start")
        status = w.HTML()
        parts = {"table": table, "run": run, "changes": changes, "warm": warm, "status": status, **buttons}
        actions = {"Stop": self.stop, "Resume": self.resume, "Delete": self.delete}

        def clicked(name: str):
            def handle(_button: Any) -> None:
                try:
                    if name == "Refresh":
                        self.refresh()
                    elif run.value is None:
                        self.last_message = "pick a run first"
                    elif name == "Clone":
                        self.clone(run.value, json.loads(changes.value or "{}"), warm.value)
                    else:
                        actions[name](run.value)
                except Exception as exc:  # noqa: BLE001 - shown in the panel, not raised into the UI loop
                    self.last_message = f"{name} failed: {type(exc).__name__}: {exc}"
                status.value = html.escape(self.last_message)

            return handle

        for name, button in buttons.items():
            button.on_click(clicked(name))
        parts["box"] = w.VBox([table, w.HBox([run, *buttons.values()]), w.HBox([changes, warm]), status])
        return parts

    def refresh(self) -> None:
        """Redraw the table and the run list from the stores now."""
        if self._widgets is None:
            return
        rows = self.rows()
        parts = self._widgets
        parts["table"].value = self.table_html(rows)
        options = [(f"run {r['run_id']} ({r['status']})", r["run_id"]) for r in rows]
        if list(parts["run"].options) != options:
            keep = parts["run"].value
            parts["run"].options = options
            parts["run"].value = (
                keep if keep in [v for _, v in options] else (options[0][1] if options else None)
            )
        parts["status"].value = html.escape(self.last_message)

    @property
    def widget(self) -> Any:
        """The panel's ipywidgets box (built on first use)."""
        if self._widgets is None:
            self._widgets = self._build()
        return self._widgets["box"]

    def display(self) -> None:
        """Show the panel in the notebook and keep it refreshed (module docstring)."""
        from IPython.display import display

        box = self.widget
        self.refresh()
        display(box)
        if self._thread is None and self.refresh_seconds > 0:
            self._thread = threading.Thread(target=self._keep_fresh, name="rapidfire-panel", daemon=True)
            self._thread.start()

    def _keep_fresh(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001, S112 - a store busy mid-write: the next tick redraws
                continue

    def close(self) -> None:
        """Stop refreshing and close the stores (the widget stays as last drawn)."""
        self._stop.set()
        with self._lock:
            self.close_stores()


__all__ = ["InteractiveController"]
