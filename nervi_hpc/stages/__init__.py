"""The pipeline stages, siblings over data/, model/ and codec/: ingest, train, compress, evaluate, decode."""
