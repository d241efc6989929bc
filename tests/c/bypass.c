// gcc: -D_GNU_SOURCE -ldl
/* bypass: ways a dynamic program can reach the kernel around libc's hooked
 * functions. Each step opens PATH and prints "STEP = OK <first line>" or
 * "STEP = ERR <errno>".
 *
 *   bypass PATH
 *
 * steps: libc (open(3)), raw (syscall(SYS_openat)), asm (an inline `syscall`
 * instruction), direct (libc's own open, looked up in libc.so.6's handle the way a
 * library's dlsym(RTLD_NEXT) would find it), uring (io_uring_setup), and last, only
 * with a second argument "int80", getpid through the i386 entry (int $0x80).
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* "STEP = OK <first line of the file>" or "STEP = ERR <errno>". */
static void report(const char *step, long rc) {
    if (rc < 0) {
        printf("%s = ERR %d\n", step, errno);
        return;
    }
    char line[128] = {0};
    ssize_t n = read((int)rc, line, sizeof line - 1);
    line[n > 0 ? strcspn(line, "\n") : 0] = 0;
    printf("%s = OK %s\n", step, line);
    close((int)rc);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2 && argc != 3) return 2;
    const char *path = argv[1];
    report("libc", open(path, O_RDONLY));
    report("raw", syscall(SYS_openat, AT_FDCWD, path, O_RDONLY));
    long rc;
    register long r10 __asm__("r10") = 0;
    __asm__ volatile("syscall" : "=a"(rc) : "0"((long)SYS_openat), "D"((long)AT_FDCWD), "S"(path), "d"((long)O_RDONLY), "r"(r10) : "rcx", "r11", "memory");
    if (rc < 0) {
        errno = (int)-rc;
        rc = -1;
    }
    report("asm", rc);
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    int (*direct_open)(const char *, int, ...) = libc ? (int (*)(const char *, int, ...))dlsym(libc, "open") : NULL;
    report("direct", direct_open ? direct_open(path, O_RDONLY) : -1);
    long uring = syscall(SYS_io_uring_setup, 1, NULL);
    printf("uring = ERR %d\n", uring < 0 ? errno : 0);
    if (argc == 3) {
        long pid;
        __asm__ volatile("int $0x80" : "=a"(pid) : "0"(20L) : "memory");
        printf("int80 = OK %ld\n", pid);
    }
    return 0;
}
