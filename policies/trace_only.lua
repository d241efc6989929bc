-- trace_only.lua: see every mediated call, change nothing.
--
-- on_call allows each call explicitly (the trace names the handler "on_call") and
-- logs nothing; pair it with -v (one line per call on stderr) and/or --trace.
--
-- Run:  hermes launch -v --trace trace.jsonl --policy policies/trace_only.lua -- curl -s https://example.com/
-- Env:  none

function on_call(ev)
  return hermes.allow()
end
