-- firewall.lua: the classic "block connect".
--
-- connect: allowed to loopback (127.0.0.0/8, ::1, ::ffff:127.x) and unix sockets;
--          every other destination is denied with ECONNREFUSED.
-- sendto/sendmsg with an inet/inet6 destination: non-loopback is denied with
--          ENETUNREACH. Connected sockets (no destination) were checked at connect;
--          other families (netlink, used by getaddrinfo) pass.
--
-- Run:  hermes launch --policy policies/firewall.lua -- curl -s http://example.com/
-- Env:  none

local function is_loopback(family, addr)
  if family == "inet" then
    return addr:match("^127%.") ~= nil
  elseif family == "inet6" then
    return addr == "::1" or addr:match("^::ffff:127%.") ~= nil
  end
  return false
end

function on_connect(ev)
  if ev.family == "unix" or is_loopback(ev.family, ev.addr) then
    return hermes.allow()
  end
  return hermes.deny("ECONNREFUSED")
end

function on_sendto(ev)
  if (ev.family == "inet" or ev.family == "inet6")
      and not is_loopback(ev.family, ev.addr) then
    return hermes.deny("ENETUNREACH")
  end
end

on_sendmsg = on_sendto
