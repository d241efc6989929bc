-- allow_all.lua: the smallest valid policy. Every call is allowed.
--
-- on_call returns nil, so each call falls through to the default (allow) and the
-- trace names the handler "default". Useful as a baseline for overhead and traces.
--
-- Run:  hermes launch --policy policies/allow_all.lua -- ls /
-- Env:  none

function on_call(ev)
end
