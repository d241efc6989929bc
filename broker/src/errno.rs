//! errno names, both ways. Policies name errors the way the man pages do.

macro_rules! errno_table {
    ($($name:ident),* $(,)?) => {
        /// Every errno a policy may name, with its number on this platform.
        pub const ERRNOS: &[(&str, i32)] = &[$((stringify!($name), libc::$name)),*];
    };
}

errno_table!(
    EPERM,
    ENOENT,
    ESRCH,
    EINTR,
    EIO,
    ENXIO,
    E2BIG,
    ENOEXEC,
    EBADF,
    ECHILD,
    EAGAIN,
    ENOMEM,
    EACCES,
    EFAULT,
    EBUSY,
    EEXIST,
    EXDEV,
    ENODEV,
    ENOTDIR,
    EISDIR,
    EINVAL,
    ENFILE,
    EMFILE,
    ENOTTY,
    ETXTBSY,
    EFBIG,
    ENOSPC,
    ESPIPE,
    EROFS,
    EMLINK,
    EPIPE,
    EDOM,
    ERANGE,
    EDEADLK,
    ENAMETOOLONG,
    ENOLCK,
    ENOSYS,
    ENOTEMPTY,
    ELOOP,
    ENOMSG,
    EIDRM,
    ENODATA,
    ETIME,
    ENOLINK,
    EPROTO,
    EBADMSG,
    EOVERFLOW,
    EILSEQ,
    EUSERS,
    ENOTSOCK,
    EDESTADDRREQ,
    EMSGSIZE,
    EPROTOTYPE,
    ENOPROTOOPT,
    EPROTONOSUPPORT,
    EOPNOTSUPP,
    EAFNOSUPPORT,
    EADDRINUSE,
    EADDRNOTAVAIL,
    ENETDOWN,
    ENETUNREACH,
    ENETRESET,
    ECONNABORTED,
    ECONNRESET,
    ENOBUFS,
    EISCONN,
    ENOTCONN,
    ETIMEDOUT,
    ECONNREFUSED,
    EHOSTDOWN,
    EHOSTUNREACH,
    EALREADY,
    EINPROGRESS,
    ESTALE,
    EDQUOT,
    ECANCELED,
    EOWNERDEAD,
    ENOTRECOVERABLE,
);

/// The number for an errno name such as `"EACCES"`.
pub fn by_name(name: &str) -> Option<i32> {
    ERRNOS.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
}

/// The name for an errno number, if it has one here.
pub fn name(errno: i32) -> Option<&'static str> {
    ERRNOS.iter().find(|&&(_, v)| v == errno).map(|&(n, _)| n)
}

/// The errno's name (`EACCES`), or its number when it has none.
pub fn text(e: i32) -> String {
    name(e).map_or_else(|| e.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_and_numbers_agree() {
        assert_eq!(super::by_name("EACCES"), Some(13));
        assert_eq!(super::name(111), Some("ECONNREFUSED"));
        assert_eq!(super::by_name("EWHATEVER"), None);
    }
}
