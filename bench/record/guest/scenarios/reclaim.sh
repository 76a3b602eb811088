# reclaim: anonymous memory above a cgroup v2 memory.max, with zram swap, so the kernel's reclaim
# (shrink_folio_list -> folio_referenced -> ptep_clear_flush_young) clears accessed bits of user
# ptes through HIGHPTE kmap_local mappings, then swaps the pages out and back in.
# Phase 1: first touch of SB_MB MB; phase 2: SB_PASSES-1 more passes under the limit.
set -e
echo +memory > /sys/fs/cgroup/cgroup.subtree_control
mkdir /sys/fs/cgroup/sb
echo "$SB_LIMIT_MB"M > /sys/fs/cgroup/sb/memory.max
echo $$ > /sys/fs/cgroup/sb/cgroup.procs
set +e
sbload reclaim "$SB_MB" "$SB_PASSES"
rc=$?
echo "memory.max=$(cat /sys/fs/cgroup/sb/memory.max)"
echo "memory.events: $(tr '\n' ' ' < /sys/fs/cgroup/sb/memory.events)"
exit $rc
