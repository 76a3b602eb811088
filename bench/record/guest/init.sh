#!/bin/sh
# shadowbench recording guest: /init of the initramfs (busybox). Prints sections on ttyS1:
# "SB-BEGIN name" ... "SB-END name"; powers off when done. The scenario is /scenario.sh.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t cgroup2 none /sys/fs/cgroup
exec 3>/dev/ttyS1
section() { name=$1; shift; echo "SB-BEGIN $name" >&3; "$@" >&3 2>&1; echo "SB-END $name rc=$?" >&3; }
section uname uname -r
section cmdline cat /proc/cmdline
section kallsyms grep ' [tT] ' /proc/kallsyms
if [ -f /lib/zsmalloc.ko ]; then
  insmod /lib/zsmalloc.ko && insmod /lib/zram.ko num_devices=1 &&
  echo 256M > /sys/block/zram0/disksize && mkswap /dev/zram0 >/dev/null &&
  swapon /dev/zram0 || echo "SB-ERROR zram swap setup failed" >&3
fi
section swaps cat /proc/swaps
section meminfo cat /proc/meminfo
section vmstat-before cat /proc/vmstat
echo "SB-BEGIN scenario" >&3
sh /scenario.sh >&3 2>&1
echo "SB-END scenario rc=$?" >&3
section vmstat-after cat /proc/vmstat
echo "SB-DONE" >&3
sync
poweroff -f
