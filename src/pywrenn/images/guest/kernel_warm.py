"""Run by the `wrenn` Jupyter kernel as it starts (IPKernelApp.exec_files), in the user's
namespace: it leaves no names there.

1. Imports the data libraries the code-runner image ships, so the first cell that uses
   them does not pay those imports (seconds natively, tens of seconds under TCG). The
   kernel in the image's base snapshot has done this once for every capsule.
2. Reseeds Python's and numpy's global random generators before the first cell that runs
   under a new hostname: every capsule restored from one snapshot starts with the same
   generator state, and the guest agent gives each capsule its own hostname (its id) on
   restore. os.urandom is already fresh then (the agent credits host entropy).
"""


def _wrenn_kernel_setup() -> None:
    import importlib
    import os
    import random

    for name in ("numpy", "pandas", "matplotlib.pyplot", "requests"):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: S112 (a missing or broken library only costs its import later)
            continue

    seeded_for = [os.uname().nodename]

    def reseed(*_: object) -> None:
        name = os.uname().nodename
        if name == seeded_for[0]:
            return
        seeded_for[0] = name
        random.seed()
        try:
            import sys

            numpy = sys.modules.get("numpy")
            if numpy is not None:
                numpy.random.seed()
        except Exception:  # noqa: S110 (reseeding is best effort beside os.urandom)
            pass

    shell = get_ipython()  # type: ignore[name-defined]  # noqa: F821
    shell.events.register("pre_run_cell", reseed)


_wrenn_kernel_setup()
del _wrenn_kernel_setup
