"""The life cycle of a run.

NEW -> ONGOING -> COMPLETED | FAILED. STOPPED and DELETED are part of the model now so that
interactive control (stop / resume / delete / clone) adds transitions, not a new store.
"""

from enum import Enum


class RunStatus(str, Enum):
    NEW = "NEW"
    ONGOING = "ONGOING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    DELETED = "DELETED"
