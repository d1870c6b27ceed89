"""`supemb` as torchrun runs it, with a fault injected for the distributed tests.

    torchrun --nproc-per-node=2 tests/dist_worker.py train --data ... --out ...

SUPEMB_TEST_FAULT="RANK:STEP:KIND" makes that rank, at that global training
step, KIND = "kill" (SIGKILL itself: a crashed process), "raise" (a bad file:
a UserError) or "interrupt" (every rank: Ctrl-C). Without it, plain `supemb`.
"""

from __future__ import annotations

import os
import signal
import sys

from supemb.cli import main
from supemb.errors import UserError
from supemb.train import trainer
from supemb.train.world import World

fault = os.environ.get("SUPEMB_TEST_FAULT")
if fault:
    rank, step, kind = fault.split(":")
    original = trainer.Trainer._train_step

    def faulty(self, x, y, epoch, at):  # type: ignore[no-untyped-def]
        if self.global_step == int(step) and (kind == "interrupt" or World.from_env().rank == int(rank)):
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if kind == "raise":
                raise UserError("data/broken.png: corrupt image (injected)")
            raise KeyboardInterrupt
        return original(self, x, y, epoch, at)

    trainer.Trainer._train_step = faulty

sys.exit(main(sys.argv[1:]))
