"""pywrenn: self-hostable microVM sandboxes ("capsules").

Owns: the package version. Knows nothing of: anything else. This module must stay
standard-library only, because the guest image ships `pywrenn.envd` with it.
"""

__version__ = "0.1.0"
