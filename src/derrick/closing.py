""":class:`Closing`: something with a ``close`` that a ``with`` block ends (core, no I/O)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Self

__all__ = ["Closing"]


class Closing(ABC):
    """A resource used as a context manager: ``with`` gives the object itself and calls
    :meth:`close` at the end of the block, whether it ended in an error or not."""

    @abstractmethod
    def close(self) -> None:
        """Release what the object holds; calling it again does nothing."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
