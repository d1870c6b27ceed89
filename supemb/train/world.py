"""Which training process this is: torchrun's RANK / WORLD_SIZE / LOCAL_RANK, read without torch.

A plain `supemb train` is a world of one. `supemb.train.distributed` does the
communication; this module only reads the environment, so the command line can
name the rank in its one-line errors without importing torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from supemb.errors import UserError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (a world of one when not launched by torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> World:
        """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE as torchrun sets them (absent: a world of one)."""
        def get(name: str, default: int) -> int:
            value = os.environ.get(name)
            try:
                return default if value in (None, "") else int(value)
            except ValueError:
                raise UserError(f"environment variable {name}={value!r} is not an integer") from None

        size = get("WORLD_SIZE", 1)
        return cls(rank=get("RANK", 0), size=size, local_rank=get("LOCAL_RANK", 0),
                   local_size=get("LOCAL_WORLD_SIZE", size))


def rank_prefix() -> str:
    """"rank N: " inside a multi-process run (for one-line errors), else ""."""
    world = World.from_env()
    return f"rank {world.rank}: " if world.active else ""
