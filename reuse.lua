on_open = hermes.allow()
on_connect = hermes.allow()
function on_sendto(ev)
  local d = hermes.fd(ev.pid, ev.fd)
  if d and d.type == 'socket' and d.port ==  then return hermes.allow() end
  hermes.log('fd ' .. ev.fd .. ' = ' .. (d and d.type or 'nil') .. ' ' .. tostring(d and (d.path or d.port)))
  return hermes.deny('EACCES')
end
