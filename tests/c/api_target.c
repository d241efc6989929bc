// gcc: -D_GNU_SOURCE -ldl
/* api_target: calls library functions for `hermes launch --hook` tests.
 *
 *   api_target puts TEXT...   puts(TEXT) for each, printing its return value after
 *   api_target printf         printf with 8 ints and 2 doubles: stack-passed
 *                             arguments and the vector registers must survive
 *   api_target zlib           dlopen libz.so.1 (not linked) and call zlibVersion()
 */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc >= 2 && !strcmp(argv[1], "puts")) {
        for (int i = 2; i < argc; i++) {
            int rc = puts(argv[i]);
            fprintf(stdout, "rc=%d\n", rc);
        }
    } else if (argc == 2 && !strcmp(argv[1], "printf")) {
        int n = printf("%d %d %d %d %d %d %d %d %.2f %.2f\n", 1, 2, 3, 4, 5, 6, 7, 8, 1.5, 2.25);
        fprintf(stdout, "n=%d\n", n);
    } else if (argc == 2 && !strcmp(argv[1], "zlib")) {
        void *z = dlopen("libz.so.1", RTLD_NOW);
        if (!z) {
            printf("no libz: %s\n", dlerror());
            return 2;
        }
        const char *(*version)(void) = (const char *(*)(void))dlsym(z, "zlibVersion");
        printf("zlib %s\n", version ? version() : "?");
    } else {
        return 2;
    }
    return 0;
}
