#!/bin/busybox sh
# wrenn initramfs /init: load the virtio modules, mount the root disk, configure eth0 from
# the kernel command line, and hand over to the guest init. Only busybox is available here.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /newroot
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t devtmpfs devtmpfs /dev
# The archive has no /dev/console node, so the kernel gave us no stdio; take the console now.
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys

die() {
    echo "wrenn-initramfs: $*"
    poweroff -f
    # poweroff returned (no ACPI?): fall through to a kernel panic, which panic=-1 turns into
    # a reset; the VM runtime starts guests with -no-reboot, so that ends the VM too.
    exit 1
}

# wrenn.debug=1 stamps each stage with the uptime, to see where boot time goes.
trace() { [ "$debug" = 1 ] && read -r up _ </proc/uptime && echo "wrenn-initramfs[$up]: $*"; }

ip_cidr=""; gw=""; probe=0; debug=0; root=/dev/vda; init=/usr/local/sbin/wrenn-init
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        wrenn.ip=*) ip_cidr="${arg#wrenn.ip=}" ;;
        wrenn.gw=*) gw="${arg#wrenn.gw=}" ;;
        wrenn.probe=1) probe=1 ;;
        wrenn.debug=1) debug=1 ;;
        wrenn.root=*) root="${arg#wrenn.root=}" ;;
        wrenn.init=*) init="${arg#wrenn.init=}" ;;
    esac
done

# The VM runtime boots with wrenn.probe=1 to learn whether this host's accelerator can run a
# guest at all: reaching this line is the answer, so say so and leave at once.
if [ "$probe" = 1 ]; then
    echo "WRENN-PROBE-OK"
    poweroff -f
    exit 1
fi

trace "loading modules"
while read -r module; do
    [ -n "$module" ] || continue
    insmod "/lib/modules/$module.ko" || echo "wrenn-initramfs: insmod $module failed"
done < /etc/wrenn-modules

trace "waiting for $root"
# virtio-mmio devices are found via ACPI and probed asynchronously: wait for the disk.
tries=0
while [ ! -b "$root" ]; do
    tries=$((tries + 1))
    [ "$tries" -le 200 ] || die "root device $root did not appear"
    sleep 0.05
done
mount -t ext4 -o rw,noatime "$root" /newroot || die "cannot mount $root"

trace "mounted $root"
ip link set lo up
if [ -n "$ip_cidr" ] && [ -e /sys/class/net/eth0 ]; then
    ip addr add "$ip_cidr" dev eth0
    ip link set eth0 up
    [ -z "$gw" ] || ip route add default via "$gw" dev eth0
fi

trace "network configured"
[ -x "/newroot$init" ] || die "guest init $init is missing from the root filesystem"
for fs in proc sys dev; do
    mount --move "/$fs" "/newroot/$fs"
done
exec switch_root /newroot "$init"
