"""The shared base under every stage (issue 18): config sections and their loading, validation, overrides and
hashing; tracking; the run folders' layout with every stage output name; the training utilities that pretraining
and the task loop share. It imports only `nws` and third-party libraries, and every stage imports it."""
