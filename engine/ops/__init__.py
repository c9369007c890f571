"""Operations: the audit trail, Prometheus metrics, the health check, structured logs.

`audit` builds audit records (PS3.15 A.5 fields), `audit_log` writes them off the
event loop, `observer` turns what happens on an association into audit records and
metric updates, `metrics` owns the per-server registry and the scrape-time collector,
`health` answers /health, `logs` sets up diagnostic logging (text or JSON).  Nothing
here imports the network, web or storage layers: they hand plain values in.
"""
