-- redirect.lua: send one path and one port somewhere else.
--
-- open of HERMES_REDIRECT_FROM (as the program wrote it, or as resolved) opens
-- HERMES_REDIRECT_TO instead. connect to port HERMES_REDIRECT_PORT_FROM (any
-- address) goes to 127.0.0.1:HERMES_REDIRECT_PORT_TO (::ffff:127.0.0.1 for inet6
-- sockets). Each redirect is off unless both of its variables are set.
--
-- Run:  HERMES_REDIRECT_FROM=/etc/motd HERMES_REDIRECT_TO=/tmp/motd \
--       HERMES_REDIRECT_PORT_FROM=80 HERMES_REDIRECT_PORT_TO=8080 \
--       hermes launch --policy policies/redirect.lua -- curl -s http://example.com/
-- Env:  HERMES_REDIRECT_FROM, HERMES_REDIRECT_TO,
--       HERMES_REDIRECT_PORT_FROM, HERMES_REDIRECT_PORT_TO

local function env(name)
  local v = os.getenv(name)
  if v == "" then return nil end
  return v
end

local path_from, path_to = env("HERMES_REDIRECT_FROM"), env("HERMES_REDIRECT_TO")
local port_from = math.tointeger(tonumber(env("HERMES_REDIRECT_PORT_FROM") or ""))
local port_to = math.tointeger(tonumber(env("HERMES_REDIRECT_PORT_TO") or ""))

function on_open(ev)
  if path_from and path_to and (ev.path == path_from or ev.raw_path == path_from) then
    hermes.log(ev.path .. " -> " .. path_to)
    return hermes.redirect(path_to)
  end
end

function on_connect(ev)
  if port_from and port_to and ev.port == port_from then
    local addr = ev.family == "inet6" and "::ffff:127.0.0.1" or "127.0.0.1"
    hermes.log(("%s:%d -> %s:%d"):format(ev.addr, ev.port, addr, port_to))
    return hermes.redirect{addr = addr, port = port_to}
  end
end
