"""The compression stage: uncompressed images re-stored as verified JPEG 2000 Lossless."""
