"""A new local SQLite MLflow store starts as a copy of an empty, already migrated one.

MLflow builds a new SQLite store by running every alembic migration it ships (about a hundred
schema steps): ~1-1.5 s on a 2-core machine, paid by every new experiment, since each keeps its
store in its own folder (`mlflow_tracker.default_tracking_uri`). That was most of the engine's
fixed cost per `run_fit` on small jobs. The migrated empty schema is the same for every store of
one MLflow install, so it is built once, kept in the cache folder, and copied::

    seed_sqlite_store("sqlite:////exp/mlflow.db")   # True: /exp/mlflow.db is now the template's copy

The template holds the schema only (MLflow's own `_initialize_tables`, no "Default" experiment:
MLflow adds that when it opens the copy, with this store's own artifact root). Its name carries
the MLflow version and a hash of the migration scripts' names, so another MLflow gets its own.
Anything that goes wrong here leaves the store to MLflow's usual path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from rapidfire_core.cache import cache_root

logger = logging.getLogger(__name__)
_SQLITE_PREFIX = "sqlite:///"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The file of a local SQLite tracking URI, None for any other URI (or an in-memory one)."""
    if not tracking_uri.startswith(_SQLITE_PREFIX):
        return None
    path = tracking_uri[len(_SQLITE_PREFIX) :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def template_key() -> str:
    """MLflow's version and a hash of its migration scripts' names: which schema a template holds."""
    import mlflow
    import mlflow.store.db_migrations as migrations

    versions = Path(migrations.__file__).parent / "versions"
    names = sorted(p.name for p in versions.glob("*.py"))
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:12]
    return f"{mlflow.__version__}-{digest}"


def _build_template(path: Path) -> None:
    """Migrate an empty SQLite file at a temporary name beside ``path``, then rename it there
    (two processes building at once each rename a complete file)."""
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables, _verify_schema

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".building-", suffix=".db")
    os.close(fd)
    try:
        engine = sqlalchemy.create_engine(f"{_SQLITE_PREFIX}{tmp}")
        try:
            _initialize_tables(engine)
            _verify_schema(engine)  # raises unless the file is at MLflow's head revision
        finally:
            engine.dispose()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def template_path(cache_dir: Path | None = None) -> Path:
    """The empty migrated store of this MLflow install, built on first use."""
    path = (cache_dir or cache_root()) / "mlflow" / f"empty-{template_key()}.db"
    if not path.is_file():
        _build_template(path)
    return path


def seed_sqlite_store(tracking_uri: str, cache_dir: Path | None = None) -> bool:
    """Create the store of ``tracking_uri`` as a copy of the template, if it is a local SQLite
    file that does not exist yet. Returns True if it did. Never raises: a failure (no writable
    cache, an MLflow whose internals moved) is logged and MLflow then builds the store itself."""
    path = sqlite_path(tracking_uri)
    if path is None or path.exists():
        return False
    try:
        template = template_path(cache_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".seeding-", suffix=".db")
        os.close(fd)
        try:
            shutil.copyfile(template, tmp)
            os.replace(tmp, path)  # never a half-copied store under the real name
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except Exception as exc:  # noqa: BLE001 - MLflow's own initialisation is the fallback
        logger.info("MLflow store template not used for %s: %s: %s", path, type(exc).__name__, exc)
        return False
    return True
