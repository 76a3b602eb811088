# shared-file: a SB_KB KB file on tmpfs; SB_CHILDREN children each map it MAP_SHARED and write
# every page (do_shared_fault: each child gets its own pte to the same page-cache page, so every
# page is mapped by SB_CHILDREN ptes, the rmap "pte_chain" case) and wait until all have (phase 1);
# then each unmaps it and exits (phase 2). The parent reads every child's /proc/PID/smaps while
# all of them hold the mapping.
sbload shared-file "$SB_CHILDREN" "$SB_KB"
