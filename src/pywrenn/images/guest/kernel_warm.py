"""Run by the `wrenn` Jupyter kernel as it starts (IPKernelApp.exec_files), in the user's
namespace: it leaves no names there.

1. Imports the data libraries the code-runner image ships and draws one throwaway plot,
   so the first cell that uses them does not pay for it (seconds natively, tens of
   seconds under TCG). The kernel in the image's base snapshot has done this once for
   every capsule.
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
    try:
        # One figure drawn to PNG and one DataFrame rendered to HTML, thrown away: the
        # first of each loads fonts and code paths that otherwise cost a user's first
        # plot half a minute under TCG.
        import io

        import matplotlib.pyplot as plt
        import pandas

        figure = plt.figure()
        plt.plot([1, 2, 3])
        figure.savefig(io.BytesIO(), format="png")
        plt.close(figure)
        pandas.DataFrame({"a": [1]})._repr_html_()
    except Exception:  # noqa: S110 (warming is best effort)
        pass

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
