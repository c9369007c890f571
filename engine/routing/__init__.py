"""The router: which instances go where, and how (rules, destinations, attribute changes).

The modules here that describe rules (`schema`, `conditions`, `changes`,
`destinations`, `rules`) are pure data: they do no I/O and import nothing of
`engine.config`, so the config loader can use them to check `[routing]` at load.
"""
