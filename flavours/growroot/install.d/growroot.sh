#!/bin/bash
# Grow the root partition, then the root filesystem, to fill the disk.
# Run by growroot.service at every boot: a disk can be enlarged at any time,
# and when there is no room this is a few cheap no-ops.
set -u
set -o pipefail

say() { echo "growroot: $*"; }
fail() { say "$*" >&2; exit 1; }

src=$(findmnt -no SOURCE /) || fail "/ is not mounted?"
src=${src%%\[*}    # btrfs subvolume: /dev/vda3[/@]
fstype=$(findmnt -no FSTYPE /)
if [ -b "$src" ]; then
    name=$(basename "$(readlink -f "$src")")
else
    # /dev/root and friends: go through the device number.
    name=$(basename "$(readlink -f "/sys/dev/block/$(findmnt -no MAJ:MIN /)")")
fi
sys=/sys/class/block/$name
[ -n "$name" ] && [ -e "$sys" ] || { say "root ($src) is not a block device; nothing to do"; exit 0; }
dev=/dev/$name

bytes() { echo $(( $(cat "$1/size") * 512 )); }   # sysfs counts 512-byte sectors

if [ -r "$sys/partition" ]; then
    part=$(cat "$sys/partition")
    disk=/dev/$(basename "$(readlink -f "$sys/..")")
    out=$(growpart "$disk" "$part" 2>&1)
    case $? in
        0) say "$dev grown to $(bytes "$sys") bytes" ;;
        1) case $out in
               *NOCHANGE:*) say "$dev already fills $disk ($(bytes "$sys") bytes)" ;;
               *) fail "growpart $disk $part failed: $out" ;;
           esac ;;
        *) fail "growpart $disk $part failed: $out" ;;
    esac
else
    # Whole disk, LVM, RAID: no partition of ours to grow, but the filesystem may
    # still be smaller than its device.
    say "$dev is not a partition; growing the filesystem only"
fi

case $(findmnt -no OPTIONS /) in
    ro|ro,*) say "/ is mounted read-only; not resizing its filesystem"; exit 0 ;;
esac
before=$(findmnt -bno SIZE /)
case $fstype in
    ext2|ext3|ext4) out=$(resize2fs "$dev" 2>&1) ;;
    xfs) out=$(xfs_growfs / 2>&1) ;;
    btrfs) out=$(btrfs filesystem resize max / 2>&1) ;;
    *) say "cannot grow $fstype filesystems; $dev left as it is"; exit 0 ;;
esac || fail "resizing the $fstype filesystem on $dev failed: $out"
after=$(findmnt -bno SIZE /)
if [ "$after" != "$before" ]; then
    say "$fstype filesystem on / grown from $before to $after bytes"
fi
