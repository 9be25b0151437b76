"""Copy an image from any source to any sink: what ``image copy``, ``pull``, ``push`` and
``save`` do, and :func:`derrick.copy`.

The engine itself is :mod:`derrick.images.engine`, below the ops, so that ``sync`` (many
copies) runs on it too without one op importing another.
"""

from __future__ import annotations

from derrick.images.engine import DEFAULT_JOBS, PlanItem, copy, copy_many

__all__ = ["DEFAULT_JOBS", "PlanItem", "copy", "copy_many"]
