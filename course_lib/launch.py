"""``python -m course_lib.launch ARGS``: ``torchrun ARGS`` whose restarts work.

Same arguments as ``torchrun``, e.g.::

    python -m course_lib.launch --standalone --nproc-per-node=2 --max-restarts=1 -m course_lib.train --max-steps 50

It sets ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (``distributed.TORCHRUN_ENV``) in its own
process, then runs torchrun's ``main``. torchrun (torch >= 2.4) otherwise shares its rendezvous
store with the workers, and after a ``--max-restarts`` restart new workers can read the
previous attempt's addresses and fail with "connectFullMesh failed" (pytorch #135712). The
variable has to reach the torchrun agent itself, before any worker exists, which is why it is
a launcher and not something ``course_lib.train`` could set. Typing it by hand works too:
``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun ...``.
"""

from __future__ import annotations

import os
import sys

from torch.distributed.run import main as torchrun_main

from .distributed import TORCHRUN_ENV


def main(argv: list[str] | None = None) -> None:
    os.environ.update(TORCHRUN_ENV)
    torchrun_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
