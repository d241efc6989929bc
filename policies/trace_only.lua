-- trace_only.lua: see every mediated call, change nothing.
--
-- on_call is the constant hermes.allow(), not a function: every operation is
-- observed. The program does not wait for the broker: opens, connects, sends and
-- execs by absolute path run at once and are reported afterwards with their results
-- (an exec that works does not return: its record has none; one by descriptor or
-- relative path is still asked). The trace names the handler "on_open", …
-- and marks the records "observed". Pair it with -vv (one line per call on stderr)
-- and/or --trace.
--
-- Run:  hermes launch -vv --trace trace.jsonl --policy policies/trace_only.lua -- curl -s https://example.com/
-- Env:  none

on_call = hermes.allow()
