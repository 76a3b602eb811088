# fork-exit: a parent with SB_KB KB of touched anonymous memory forks SB_CHILDREN children one at
# a time; each writes every page (copy-on-write faults) and exits (exit_mmap frees its tables).
# Phase 1: the forks.
sbload fork-exit "$SB_CHILDREN" "$SB_KB"
