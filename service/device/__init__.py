"""Shared device batching: one host process per server batches every worker's crops (`host` has the
design), workers reach it through `client`, over the frames of `protocol`."""
