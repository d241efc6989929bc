---@meta
-- LuaLS definitions for HERMES policies (see docs/lua-api.md).
-- Add this directory to "workspace.library" in .luarc.json for completion.

---@alias hermes.Op "open"|"connect"|"sendto"|"sendmsg"|"exec"|"api"
---@alias hermes.Family "inet"|"inet6"|"unix"|"other"
---@alias hermes.Layer "preload"|"ptrace"
---Argument kinds for `hermes.hook`; "buf:N" is a buffer whose length is argument N (1-based, declared "int").
---@alias hermes.ArgKind "int"|"ptr"|"cstr"|string

---A mediated call. Fields beyond the common ones depend on `op`.
---@class hermes.Event
---@field name string C function called, e.g. "openat", "fopen", "execvp"; ptrace layer: the syscall; api: the symbol
---@field op hermes.Op operation
---@field pid integer process id
---@field tid integer thread id
---@field ppid integer parent process id
---@field exe string absolute path of the calling process's executable
---@field layer hermes.Layer hooking layer: "preload" (LD_PRELOAD hooks) or "ptrace" (static programs)
---@field path? string open: absolute, resolved path the kernel would open; exec: resolved program path
---@field raw_path? string open/exec: path exactly as the program passed it
---@field dirfd? integer open: directory fd, -100 = AT_FDCWD
---@field flags? integer open: open(2) flags (fopen modes translated); sendto/sendmsg: MSG_* flags
---@field mode? integer open: creation mode
---@field write? boolean open: true when the open can modify the file
---@field fd? integer connect/sendto/sendmsg: socket fd
---@field family? hermes.Family connect; sendto/sendmsg when a destination is named
---@field addr? string IP address as text, or unix socket path ("@" prefix = abstract)
---@field port? integer inet/inet6 port
---@field len? integer sendto/sendmsg: bytes to send
---@field argv? string[] exec: arguments
---@field envp? string[] exec: environment, "NAME=value"
---@field lib? string api: the library as hooked, e.g. "libz.so.1"
---@field symbol? string api: the symbol, e.g. "deflate"
---@field raw? integer[] api: the six integer argument registers rdi, rsi, rdx, rcx, r8, r9
---@field args? (integer|string)[] api: arguments decoded by the declared signature (ints, pointers as integers, cstr/buf as strings); empty without one
---@field backtrace? string[] when asked for (hermes.want, or hermes.hook's option): return addresses as "FILE+0xOFFSET", innermost first
---@field time_ns integer when the broker received the call (an observed call: when the program made it): CLOCK_MONOTONIC in nanoseconds
---@field data? string sendto/sendmsg, with hermes.want{payload=N}: the first N bytes of the payload
---@field regs? table<string, integer> ptrace layer, with hermes.want{"registers"}: rax, rbx, …, rip, eflags, orig_rax
---@field maps? string with hermes.want{"maps"}: the text of /proc/PID/maps

---An opaque decision built by `hermes.allow`, `deny`, `redirect`, `emulate`, `kill`.
---@class hermes.Decision

---Address redirect target for connect/sendto/sendmsg. Omitted fields keep the original.
---@class hermes.AddrTarget
---@field addr? string IP address as text
---@field port? integer
---@field path? string unix socket path

---@class hermes
---@field policy_dir string directory of the policy file, absolute, no trailing slash
---@field errno table<string, integer> errno name -> number, e.g. hermes.errno.EACCES == 13
---@field O_RDONLY integer
---@field O_WRONLY integer
---@field O_RDWR integer
---@field O_ACCMODE integer
---@field O_CREAT integer
---@field O_EXCL integer
---@field O_TRUNC integer
---@field O_APPEND integer
---@field O_NOFOLLOW integer
---@field O_DIRECTORY integer
---@field O_CLOEXEC integer
---@field O_TMPFILE integer
hermes = {}

---@class hermes.DecisionOptions
---@field cache? boolean remember the decision in the target process for identical calls (until a reload)

---Run the call. `hermes.allow()` as a handler's value (not a function) makes the operation observed.
---@param options? hermes.DecisionOptions
---@return hermes.Decision
function hermes.allow(options) end

---Do not run the call; fail it with `errno` (default EPERM). api: the function returns -1 with errno set.
---An unknown errno name raises an error (the call fails closed).
---@param errno? string|integer name like "EACCES", or a number
---@param options? hermes.DecisionOptions
---@return hermes.Decision
function hermes.deny(errno, options) end

---Run the call with arguments replaced: open flags/mode, a sendto/sendmsg payload (at most 4000 bytes).
---@param fields {flags?: integer, mode?: integer, data?: string}
---@return hermes.Decision
function hermes.rewrite(fields) end

---Deny with `errno` on a schedule, else allow: `probability` (0..1) with an optional `seed`
---(default 0; reproducible), or exactly the `nth` call reaching this line.
---@param fields {errno: string|integer, probability?: number, seed?: integer, nth?: integer}
---@return hermes.Decision
function hermes.fault(fields) end

---Ask for context with every event (top level): "backtrace", "registers", "maps", "state",
---"payload" (4096 bytes) or payload = N.
---@param what string|table
function hermes.want(what) end

---What descriptor `fd` of process `pid` is: {type="file", path=…}, {type="socket", family=, addr=, port=},
---{type="other", path=…}; nil when it is not open.
---@param pid integer
---@param fd integer
---@return table|nil
function hermes.fd(pid, fd) end

---What is known of a process: {pid, ppid, exe, argv, children, start_time, alive}; nil if never seen.
---@param pid integer
---@return table|nil
function hermes.process(pid) end

---CLOCK_MONOTONIC in nanoseconds (the clock of ev.time_ns).
---@return integer
function hermes.now() end

---Redirect the call: a string path for open/exec, a table for connect/sendto/sendmsg.
---Refused for api calls (the call fails closed).
---@param target string|hermes.AddrTarget
---@return hermes.Decision
function hermes.redirect(target) end

---Do not run the call; return `retval` to the program (api: the hooked function returns it).
---Refused for fopen/freopen and posix_spawn/posix_spawnp.
---@param retval integer
---@param options? hermes.DecisionOptions
---@return hermes.Decision
function hermes.emulate(retval, options) end

---Kill the calling process with SIGKILL.
---@return hermes.Decision
function hermes.kill() end

---Print "hermes: policy: <msg>" to stderr and attach msg to the call's trace record.
---@param msg string
function hermes.log(msg) end

---Hook a library function (also without `--hook`, also in libraries dlopened later)
---and declare how to decode its arguments. Call at the top level of the policy.
---Kinds: "int", "ptr", "cstr" (NUL-terminated string), "buf:N" (buffer whose length is
---argument N, 1-based, itself declared "int"); at most 6. Strings and buffers are copied
---up to 1024 bytes in total per call; a bad pointer gives an empty string.
---Not available for statically linked programs.
---@param spec string "LIB:SYMBOL", e.g. "libz.so.1:deflate"
---@param signature? hermes.ArgKind[] e.g. {"cstr", "int", "buf:2"}
---@param options? {backtrace?: boolean} backtrace: send `ev.backtrace` with each call
function hermes.hook(spec, signature, options) end

-- Entry points: define any of these as globals in the policy.

---Called for every mediated call, after the per-operation handler returned nil.
---@param ev hermes.Event
---@return hermes.Decision|nil
function on_call(ev) end

---Called for opens (open, openat, creat, fopen, freopen, __open_2, __open_nocancel, … and 64-bit
---variants; ptrace layer: open, openat, openat2, creat).
---@param ev hermes.Event
---@return hermes.Decision|nil
function on_open(ev) end

---Called for connect.
---@param ev hermes.Event
---@return hermes.Decision|nil
function on_connect(ev) end

---Called for sendto.
---@param ev hermes.Event
---@return hermes.Decision|nil
function on_sendto(ev) end

---Called for sendmsg.
---@param ev hermes.Event
---@return hermes.Decision|nil
function on_sendmsg(ev) end

---Called for execve, execv, execvp, execvpe, execveat, fexecve, posix_spawn, posix_spawnp
---(with inline hooks, posix_spawn(p) and system() are decided in the child as execve).
---@param ev hermes.Event
---@return hermes.Decision|nil
function on_exec(ev) end

---Called for hooked library functions (`--hook LIB:SYMBOL` or `hermes.hook`): ev.op == "api".
---@param ev hermes.Event
---@return hermes.Decision|nil
function on_api(ev) end

---Legacy entry point, tried after on_call. "BLOCK" denies with EPERM.
---@param name string C function name
---@param args hermes.Event
---@return "ALLOW"|"BLOCK"|hermes.Decision|nil
function on_syscall(name, args) end
