"""Files that run inside the guest, shipped by the image builder.

Owns: the initramfs `/init` script and the guest PID 1 (`wrenn_init.py`, installed as
/usr/local/sbin/wrenn-init). Knows nothing of: the host; these files are only copied.
"""
