"""Query side of the archive: turning C-FIND identifiers into tests on indexed values."""
