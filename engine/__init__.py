"""pacs-engine: a high-throughput DICOM archive and router on asyncio."""

__version__ = "0.1.0"
