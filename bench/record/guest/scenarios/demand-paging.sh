# demand-paging: map SB_MB MB of anonymous memory and touch each page once (phase 1: a pte
# store per page, page tables allocated as the faults reach them), then unmap it (phase 2).
sbload demand-paging "$SB_MB"
