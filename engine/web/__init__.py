"""The DICOMweb API (PS3.18): QIDO-RS, WADO-RS and STOW-RS over HTTP, served by
uvicorn on the engine's own event loop (engine/web/app.py)."""
