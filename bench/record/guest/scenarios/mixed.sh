# mixed: the other scenarios one after another in one process, under a cgroup v2 memory.max with
# zram swap (as reclaim): demand-paging (phases 1-2), fork-exit (3 setup, 4 forks), shared-file
# (5 writing the file, 6 map, 7 unmap), reclaim (8 fill, 9 reclaim). Only the reclaim part's
# footprint is above the limit.
set -e
echo +memory > /sys/fs/cgroup/cgroup.subtree_control
mkdir /sys/fs/cgroup/sb
echo "$SB_LIMIT_MB"M > /sys/fs/cgroup/sb/memory.max
echo $$ > /sys/fs/cgroup/sb/cgroup.procs
set +e
sbload mixed "$SB_DEMAND_MB" "$SB_FORK_CHILDREN" "$SB_FORK_KB" "$SB_SHARED_CHILDREN" \
  "$SB_SHARED_KB" "$SB_MB" "$SB_PASSES"
rc=$?
echo "memory.max=$(cat /sys/fs/cgroup/sb/memory.max)"
echo "memory.events: $(tr '\n' ' ' < /sys/fs/cgroup/sb/memory.events)"
exit $rc
