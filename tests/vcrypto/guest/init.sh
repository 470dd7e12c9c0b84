#!/bin/busybox sh
# /init of the QEMU test guest (tests/vcrypto/qemu_guest.py builds the
# initramfs): load the virtio + AF_ALG modules, show the virtio crypto
# algorithms and the virtio interrupt count, run afalg with the arguments
# from the kernel command line (vc.*=), power off. Every line the test reads
# starts with a fixed tag.
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
for m in $(cat /modules.load); do
    insmod "/modules/$m" || echo "guest: insmod $m failed"
done
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^vc\.$1=//p"; }
DRIVER=$(arg driver)
# the device registers its algorithms (and their self-tests run) at probe
i=0
while ! grep -q "virtio_crypto" /proc/crypto && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
grep -B1 -A5 "^driver *: virtio" /proc/crypto | sed 's/^/crypto: /'
grep virtio /proc/interrupts | sed 's/^/irq-before: /'
echo "guest: running afalg"
/afalg "$DRIVER" "$(arg key)" "$(arg iv)" "$(arg seed)" /tmp $(arg sizes | tr ',' ' ')
echo "guest: afalg rc $?"
for f in /tmp/ct.*; do [ -e "$f" ] && sha256sum "$f" | sed 's/^/sha256: /'; done
BENCH=$(arg bench)
if [ -n "$BENCH" ]; then
    for drv in $(echo "$BENCH" | tr ',' ' '); do
        /afalg "$drv" "$(arg key)" "$(arg iv)" 1 /tmp $(arg benchsizes | tr ',' ' ' | sed 's/\([0-9][0-9]*\)/bench:\1/g')
    done
fi
grep virtio /proc/interrupts | sed 's/^/irq-after: /'
echo "guest: done"
poweroff -f
