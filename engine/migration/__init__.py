"""Migration from legacy archives: `pacs import` (and `pacs export`).

Import reads a tree of Part 10 files the way network ingest reads a C-STORE:
the same tag scanner, content address, blob store, index writer and duplicate
policy, so an imported instance cannot be told from a received one.

    walker     which files to read: directories, DICOMDIR, symlink and special-file rules
    scan       one file in a worker process: read, check, hash, scan (and copy into tmp/)
    indexing   one batch of scanned files into the index, in one transaction
    importer   orchestration: workers, batching, the journal, retries, Ctrl-C
    report     progress on the terminal and the final / per-file report
"""
