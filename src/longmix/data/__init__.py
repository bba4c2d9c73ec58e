"""The data pipeline, one module per stage, no torch needed:

corpus (readers) -> tokenize (exact lengths, document table) -> mixture (strategy -> plan ->
selection) -> pack (shuffle, layout, token parts) -> store (reader, exports), with stats
(tables, report, plots); prepare runs them over an executor (local processes or Ray).
"""
