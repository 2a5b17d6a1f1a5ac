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

When a worker fails, each worker has already said why in one ``error:`` line; the launcher then
adds one ``[launch]`` line naming the failed ranks and exits with the first failure's code, instead of
torchrun's own traceback of itself (``ChildFailedError``, ~40 lines that say nothing more).
"""

from __future__ import annotations

import os
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun_main

from .distributed import TORCHRUN_ENV


def main(argv: list[str] | None = None) -> None:
    os.environ.update(TORCHRUN_ENV)
    try:
        torchrun_main(sys.argv[1:] if argv is None else argv)
    except ChildFailedError as e:
        _, first = e.get_first_failure()
        ranks = sorted(e.failures)
        codes = sorted({f.exitcode for f in e.failures.values()})
        print(
            f"[launch] {e.name}: worker rank(s) {ranks} failed (exit code(s) {codes}); the workers' own "
            "error line above says why",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(first.exitcode if 0 < first.exitcode < 256 else 1)


if __name__ == "__main__":
    main()
