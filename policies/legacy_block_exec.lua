-- legacy_block_exec.lua: the original on_syscall form, still supported.
--
-- Returns "BLOCK" (deny with EPERM) for every exec-family call (execve, execvp,
-- posix_spawn, ...) and "ALLOW" for everything else.
--
-- Run:  hermes launch --policy policies/legacy_block_exec.lua -- sh -c 'ls'
-- Env:  none

function on_syscall(name, args)
  if args.op == "exec" then
    return "BLOCK"
  end
  return "ALLOW"
end
