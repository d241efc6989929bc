-- readonly_home.lua: reads anywhere, writes only under one directory.
--
-- Any open that can modify a file (ev.write: O_WRONLY, O_RDWR, O_CREAT, O_TRUNC or
-- O_APPEND) outside the writable directory is denied with EACCES. The check is on
-- path components: "/tmpfoo" is not under "/tmp". ev.path is symlink-resolved, so
-- give the directory as a resolved absolute path.
--
-- Run:  HERMES_WRITABLE_DIR=$HOME/out hermes launch --policy policies/readonly_home.lua -- make
-- Env:  HERMES_WRITABLE_DIR  writable directory (default "/tmp")

local writable = os.getenv("HERMES_WRITABLE_DIR") or ""
if writable == "" then writable = "/tmp" end
writable = writable:gsub("/+$", "")  -- "/tmp/" -> "/tmp", "/" -> ""

-- true if path is dir itself or inside it ("" stands for "/")
local function under(path, dir)
  return path == dir or path:sub(1, #dir + 1) == dir .. "/"
end

function on_open(ev)
  if ev.write and not under(ev.path, writable) then
    hermes.log("write denied: " .. ev.path)
    return hermes.deny("EACCES")
  end
end
