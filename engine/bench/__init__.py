"""`pacs bench`: the benchmark suite, shipped with the engine.

Performance engineers compare an archive with what they run today before they
trust it with a hospital's load, so the suite runs from the installed package:
it generates its own data, starts the peers (DCMTK storescp, Orthanc, a
pynetdicom SCP) beside `pacs serve`, drives them all with the same sender, checks
every result and writes a report.  Entry point: engine.bench.runner.main.

This package may import any engine layer; nothing in engine imports it except
engine/cli.py.
"""
