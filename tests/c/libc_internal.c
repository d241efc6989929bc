// gcc: -D_GNU_SOURCE -ldl
/* libc_internal: reach libc's functions without going through the program's PLT,
 * the way libraries and libc itself do, so only inline hooks can see the calls.
 *
 *   libc_internal fopen PATH    fopen from libc's own symbol (dlsym on libc.so.6)
 *   libc_internal system CMD    system(3): libc's posix_spawn, then its __execve
 *   libc_internal spawn PATH    posix_spawn of PATH via libc's own symbol
 *
 * Prints "OK <first line>" / "ERR <errno>" for fopen, "status=<wait status>" for
 * system, "OK exit=N" / "ERR <errno>" for spawn.
 */
#include <dlfcn.h>
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

extern char **environ;

static void *libc_symbol(const char *name) {
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    void *sym = libc ? dlsym(libc, name) : NULL;
    if (!sym) {
        printf("no %s in libc: %s\n", name, dlerror());
        exit(2);
    }
    return sym;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3) return 2;
    if (!strcmp(argv[1], "fopen")) {
        FILE *(*libc_fopen)(const char *, const char *) = (FILE * (*)(const char *, const char *)) libc_symbol("fopen");
        FILE *fp = libc_fopen(argv[2], "r");
        if (!fp) {
            printf("ERR %d\n", errno);
            return 0;
        }
        char line[256] = {0};
        if (fgets(line, sizeof line, fp)) line[strcspn(line, "\n")] = 0;
        printf("OK %s\n", line);
        fclose(fp);
    } else if (!strcmp(argv[1], "system")) {
        int (*libc_system)(const char *) = (int (*)(const char *))libc_symbol("system");
        printf("status=%d\n", libc_system(argv[2]));
    } else if (!strcmp(argv[1], "spawn")) {
        typedef int (*spawn_fn)(pid_t *, const char *, const posix_spawn_file_actions_t *,
                                const posix_spawnattr_t *, char *const[], char *const[]);
        spawn_fn libc_spawn = (spawn_fn)libc_symbol("posix_spawn");
        char *args[] = {argv[2], NULL};
        pid_t pid;
        int rc = libc_spawn(&pid, argv[2], NULL, NULL, args, environ);
        if (rc != 0) {
            printf("ERR %d\n", rc);
            return 0;
        }
        int status;
        waitpid(pid, &status, 0);
        printf("OK exit=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
    return 0;
}
