-- demo.lua: the policy for demo/run.sh (client: demo/opaque_client.c).
--
--   open demo/data/config.ini    -> redirected to demo/data/config.sandbox.ini
--   open demo/data/secret.txt    -> denied, EACCES (logged)
--   connect 127.0.0.1:PORT+1     -> redirected to 127.0.0.1:PORT (the listener)
--   connect to non-loopback inet -> denied, ECONNREFUSED
--   sendto to non-loopback inet  -> denied, ENETUNREACH
--   exec of sh, bash, dash, zsh  -> denied, EACCES; other execs are logged
--
-- Run:  demo/run.sh
--   or: HERMES_DEMO_PORT=9000 hermes launch -v --policy policies/demo.lua -- target/demo/opaque_client 9000
-- Env:  HERMES_DEMO_PORT  the listener's port (connect redirect is off when unset)

-- policies/ and demo/ are siblings; ev.path is absolute and resolved, and so is
-- hermes.policy_dir.
local root = hermes.policy_dir:match("^(.*)/[^/]*$")
local data = root .. "/demo/data"
local port = math.tointeger(tonumber(os.getenv("HERMES_DEMO_PORT") or ""))

local function is_loopback(family, addr)
  if family == "inet" then return addr:match("^127%.") ~= nil end
  if family == "inet6" then return addr == "::1" or addr:match("^::ffff:127%.") ~= nil end
  return false
end

local function basename(path)
  return path and path:match("([^/]*)$")
end

local shells = { sh = true, bash = true, dash = true, zsh = true }

function on_open(ev)
  if ev.path == data .. "/config.ini" then
    return hermes.redirect(data .. "/config.sandbox.ini")
  elseif ev.path == data .. "/secret.txt" then
    hermes.log("denied read of " .. ev.path)
    return hermes.deny("EACCES")
  end
end

function on_connect(ev)
  if port and ev.family == "inet" and ev.addr == "127.0.0.1" and ev.port == port + 1 then
    return hermes.redirect{port = port}
  end
  if (ev.family == "inet" or ev.family == "inet6") and not is_loopback(ev.family, ev.addr) then
    return hermes.deny("ECONNREFUSED")
  end
end

function on_sendto(ev)
  if (ev.family == "inet" or ev.family == "inet6") and not is_loopback(ev.family, ev.addr) then
    return hermes.deny("ENETUNREACH")
  end
end

function on_exec(ev)
  -- check both names: /bin/sh may resolve to dash, busybox, ...
  if shells[basename(ev.path)] or shells[basename(ev.raw_path)] then
    hermes.log("denied shell: " .. ev.path)
    return hermes.deny("EACCES")
  end
  hermes.log("exec " .. ev.path .. ": " .. table.concat(ev.argv, " "))
end
