# demand-paging: map SB_MB MB of anonymous memory with madvise(MADV_NOHUGEPAGE) (else transparent
# huge pages serve it with one fault per 2 or 4 MB) and write each 4 KiB page once: one
# do_anonymous_page fault per page, page tables allocated as the faults reach them (phase 1);
# then unmap it: zap_pte_range clears every pte, free_pgtables frees the tables (phase 2).
sbload demand-paging "$SB_MB"
