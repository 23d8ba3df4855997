"""Experiments under a root folder, and resolving a name (from a URL or the CLI) to one.

An experiment is a direct child directory of the root that holds a `runs.db` (the run and
command stores, `rapidfire_core.control`). Names that come from a request must name such a
child: no separators, no `.`/`..`, nothing hidden, so a URL can never reach outside the root.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# Where experiments live is `rapidfire_core.layout`'s (light: no torch), as for `Experiment`.
from rapidfire_core.layout import DB_NAME, experiments_root, is_experiment_dir


class ExperimentNotFound(LookupError):
    """No experiment of that name (or path); the message says where it looked."""


def default_root() -> Path:
    """$RF_EXPERIMENT_PATH, else ./rapidfire_experiments (`layout.experiments_root`, as `Experiment`)."""
    return experiments_root()


def refused_reason(root: Path, path: Path) -> str | None:
    """Why the experiment folder `path` (a child of `root`) is not served at all: it is a
    symbolic link that leads outside the root (a URL names children of the root only)."""
    target, base = path.resolve(), root.resolve()
    if target != base and base not in target.parents:
        return (
            f"experiment folder {path.name!r} is a symbolic link to {target}, outside the root {base}:"
            " not served"
        )
    return None


def read_only_reason(path: Path) -> str | None:
    """Why the dashboard must not write to the experiment at `path` (None if it may): its
    runs.db is a symbolic link, so a write would land in whatever file it points to."""
    db = path / DB_NAME
    if db.is_symlink():
        return (
            f"{path.name}/{DB_NAME} is a symbolic link (to {os.readlink(db)}): served read-only,"
            " commands refused"
        )
    return None


def list_experiments(root: Path) -> list[dict[str, Any]]:
    """Experiments directly under `root`, most recently written first:
    [{"name", "path", "updated_at"}], plus "refused" (`refused_reason`), "read_only"
    (`read_only_reason`) or "unreadable" (the OS refused to look into it) when those apply;
    [] if the root does not exist (yet). One odd folder never hides the others."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.name.startswith("."):
            continue
        try:
            entry = _entry(root, child)
        except FileNotFoundError:  # removed while we looked
            continue
        except OSError as exc:  # e.g. a folder of another user that this one may not enter
            entry = {"name": child.name, "path": str(child), "updated_at": 0.0}
            entry["unreadable"] = f"{child.name} cannot be read: {exc.strerror or exc}"
        if entry is not None:
            found.append(entry)
    found.sort(key=lambda e: (-e["updated_at"], e["name"]))
    return found


def _entry(root: Path, child: Path) -> dict[str, Any] | None:
    if not child.is_dir() or not is_experiment_dir(child):
        return None
    db = child / DB_NAME
    # The WAL file changes on every write; the main file only at checkpoints.
    wal = child / (DB_NAME + "-wal")
    mtime = max(db.stat().st_mtime, wal.stat().st_mtime if wal.exists() else 0.0)
    entry: dict[str, Any] = {"name": child.name, "path": str(child.resolve()), "updated_at": mtime}
    refused, read_only = refused_reason(root, child), read_only_reason(child)
    if refused:
        entry["refused"] = refused
    elif read_only:
        entry["read_only"] = read_only
    return entry


def check_name(name: str) -> str:
    """`name` if it can only mean a direct child of a root; ValueError otherwise."""
    if (
        not name
        or name in (".", "..")
        or name.startswith(".")
        or any(sep in name for sep in ("/", "\\", "\0"))
        or (os.altsep and os.altsep in name)
    ):
        raise ValueError(f"invalid experiment name {name!r}: expected the name of a folder in the root")
    return name


def experiment_dir(root: Path, name: str) -> Path:
    """The experiment `name` under `root` (ValueError for a name that is not a plain child,
    ExperimentNotFound when there is no such experiment)."""
    path = root / check_name(name)
    if not is_experiment_dir(path):
        raise ExperimentNotFound(_not_found(name, root))
    return path


def resolve_experiment(arg: str, root: Path) -> Path:
    """An experiment named on the command line: a path to an experiment directory (when `arg`
    has a separator), else a name under `root`, else a directory of that name here."""
    if os.sep in arg or (os.altsep and os.altsep in arg):
        path = Path(arg).expanduser()
        if not is_experiment_dir(path):
            raise ExperimentNotFound(f"{arg} is not an experiment directory (it holds no {DB_NAME})")
        return path
    try:
        return experiment_dir(root, arg)
    except ValueError as exc:
        raise ExperimentNotFound(str(exc)) from None
    except ExperimentNotFound:
        if is_experiment_dir(Path(arg)):
            return Path(arg)
        raise


def _not_found(name: str, root: Path) -> str:
    names = [e["name"] for e in list_experiments(root)]
    where = f"under {root.resolve()}"
    if not names:
        return f"no experiment {name!r} {where} (there are none there)"
    return f"no experiment {name!r} {where}; there are: {', '.join(sorted(names))}"
